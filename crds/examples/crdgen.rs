//! Prints both CustomResourceDefinitions as YAML without building the operator:
//! `cargo run -p meshbench-crds --example crdgen` (the same text as `meshbench crds`).

fn main() {
    print!("{}", meshbench_crds::crds_yaml());
}
