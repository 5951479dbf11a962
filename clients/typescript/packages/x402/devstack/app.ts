// The resource server of the end-to-end test, the demo and benches: an Express app whose
// `GET /forecast` is protected by the real `@x402/express` middleware with the Tollgate server
// scheme and whichever x402 facilitator client it is given (x402's own HTTPFacilitatorClient
// pointed at `tollgate serve`, or the binary FleetFacilitatorClient), next to an unpaid
// `GET /free` (the same work without payment, for comparison).

import type { AddressInfo } from "node:net";
import type { Server } from "node:http";
import express from "express";
import { paymentMiddleware, x402ResourceServer } from "@x402/express";
import type { FacilitatorClient } from "@x402/core/server";
import { SigningKey } from "@tollgate/client";
import { FleetFacilitatorClient, TollgateServerScheme, network, type TollgateFlow } from "../src/index.js";
import type { Stack } from "./stack.js";

export interface PaidApiOptions {
  stack: Stack;
  facilitator: FacilitatorClient;
  /** The payee: who the route's payments go to. */
  payTo: string;
  /** Token units per request. */
  price: bigint;
  flow?: TollgateFlow;
}

export interface PaidApi {
  /** `http://127.0.0.1:port`. */
  url: string;
  /** The paid route's URL, also its `extra.resource`. */
  paidUrl: string;
  /** Its price, token units per request. */
  price: bigint;
  /** Requests the paid handler served (it runs only for a payment the facilitator took). */
  served: () => number;
  close(): Promise<void>;
}

/** A FleetFacilitatorClient on the stack's fleet port (open mode: any client id and key). */
export function connectFleetFacilitator(stack: Stack): Promise<FleetFacilitatorClient> {
  return FleetFacilitatorClient.connect({
    host: stack.fleet.host,
    port: stack.fleet.port,
    clientId: 1n,
    clientKey: SigningKey.generate(),
    domain: stack.domain,
  });
}

/** The body both routes answer with. */
export function forecast(): { tomorrow: string } {
  return { tomorrow: "sunny" };
}

export async function startPaidApi(options: PaidApiOptions): Promise<PaidApi> {
  const app = express();
  const server: Server = await new Promise((resolve) => {
    const listening = app.listen(0, "127.0.0.1", () => resolve(listening));
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const paidUrl = `${url}/forecast`;
  const resourceServer = new x402ResourceServer(options.facilitator).register(
    network(options.stack.chainId),
    new TollgateServerScheme({ asset: options.stack.token, ...(options.flow ? { flow: options.flow } : {}) }),
  );
  app.use(
    paymentMiddleware(
      {
        "GET /forecast": {
          accepts: {
            scheme: "tollgate",
            network: network(options.stack.chainId),
            payTo: options.payTo,
            price: { asset: options.stack.token, amount: options.price.toString() },
            maxTimeoutSeconds: 60,
            // Bound into request_hash: a receipt for this route pays for this route only.
            extra: { resource: paidUrl },
          },
          resource: paidUrl,
          description: "Tomorrow's forecast",
          mimeType: "application/json",
        },
      },
      resourceServer,
    ),
  );
  let served = 0;
  app.get("/forecast", (_req, res) => {
    served += 1;
    res.json(forecast());
  });
  app.get("/free", (_req, res) => {
    res.json(forecast());
  });
  return {
    url,
    paidUrl,
    price: options.price,
    served: () => served,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
