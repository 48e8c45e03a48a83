//! The `xsteer-cni` chained CNI plugin (`xsteer::cni`): the runtime runs it with the command in
//! the environment and the network config on stdin.

use std::io::Write as _;

fn main() {
    let outcome = xsteer::cni::plugin::invoke(|name| std::env::var(name).ok(), std::io::stdin());
    let mut stdout = std::io::stdout().lock();
    // Nothing else can report a failed write: stdout is the runtime's only channel.
    let written = stdout
        .write_all(outcome.stdout.as_bytes())
        .and_then(|()| stdout.flush());
    let code = if written.is_err() {
        1
    } else {
        outcome.exit_code
    };
    std::process::exit(code);
}
