//! The `meshbench` command line. Parsing and dispatch live in the library
//! (`meshbench_operator::cli`) so tests can drive them.

fn main() -> std::process::ExitCode {
    meshbench_operator::cli::main()
}
