//! `tricommit sim --seeds N --from S`.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct SimArgs {
    /// How many seeds to run.
    #[arg(long, default_value_t = 1000)]
    pub seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
}

pub fn run(args: SimArgs) -> ExitCode {
    eprintln!("error: the simulator is not built yet (seeds {}..)", args.from);
    ExitCode::from(2)
}
