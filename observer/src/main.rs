use clap::Parser;
use temporal_observer::cli::{Cli, Command, attach, inspect, layout, watch};

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = Cli::parse();
    let result = cli.apply_global().and_then(|()| match &cli.command {
        Command::Attach(args) => attach::run(args),
        Command::Watch(args) => watch::run(args),
        Command::Layout(args) => layout::run(args),
        Command::Inspect(args) => inspect::run(args),
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
