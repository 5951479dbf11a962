// Every failure this package reports is an instance of one of these classes, so callers can
// branch with `instanceof` instead of parsing messages.

/** The base of every error `@tollgate/client` throws or rejects with. */
export class TollgateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** Text (hex, decimal, JSON) that does not describe what it should. */
export class FormatError extends TollgateError {
  constructor(
    /** Which field or input was wrong. */
    readonly field: string,
    detail: string,
  ) {
    super(`${field}: ${detail}`);
  }
}

/** The client's configuration cannot work. */
export class ConfigError extends TollgateError {}

/** The server could not be reached, or the connection failed during the handshake. */
export class ConnectError extends TollgateError {
  constructor(
    readonly addr: string,
    readonly detail: string,
  ) {
    super(`cannot reach ${addr}: ${detail}`);
  }
}

/** The server refused with an ERROR frame and closed the connection. */
export class RefusedError extends TollgateError {
  constructor(
    /** The wire code (see `ERROR_CODES`). */
    readonly code: number,
    /** Its stable name, or `code N` for a code this client does not know. */
    readonly codeName: string,
    /** The server's explanation. */
    readonly text: string,
  ) {
    super(`server refused: ${codeName} (${code}): ${text}`);
  }
}

/** The server sent something the protocol does not allow. */
export class ProtocolError extends TollgateError {}

/**
 * The client gave up reconnecting. Receipts without a verdict may or may not have been applied:
 * submit them again (a new client is fine): none is counted twice, and one that was applied comes
 * back rejected as `duplicate`.
 */
export class DisconnectedError extends TollgateError {
  constructor(
    readonly attempts: number,
    readonly last: string,
  ) {
    super(`gave up after ${attempts} reconnect attempts: ${last}`);
  }
}

/** The client was closed, or stopped after an earlier error, before answering. */
export class ClosedError extends TollgateError {
  constructor() {
    super("client is closed");
  }
}
