//! CPU time of processes and threads, from their `/proc/.../stat` files: what the benches use to
//! say where a run's CPU went.

use anyhow::Context;

/// Linux reports CPU time in ticks of USER_HZ, which is 100 on every architecture's ABI.
pub(crate) const TICKS_PER_S: f64 = 100.0;

/// A `stat` file's command name and user plus system ticks (a process's or one thread's).
pub(crate) fn cpu_ticks(stat: &str) -> anyhow::Result<(String, u64)> {
    let text = std::fs::read_to_string(stat).with_context(|| format!("reading {stat}"))?;
    // The name is in parentheses and may hold anything, so fields are counted after the last ')'.
    let (head, rest) = text
        .rsplit_once(')')
        .with_context(|| format!("{stat}: no command name"))?;
    let name = head.split_once('(').map_or("", |(_, name)| name).to_owned();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .with_context(|| format!("{stat}: no field {n}"))?
            .parse()
            .with_context(|| format!("{stat}: field {n} is not a number"))
    };
    Ok((name, field(14)? + field(15)?))
}

/// User plus system seconds of the process or thread whose `stat` file this is.
pub(crate) fn cpu_seconds(stat: &str) -> anyhow::Result<f64> {
    Ok(cpu_ticks(stat)?.1 as f64 / TICKS_PER_S)
}
