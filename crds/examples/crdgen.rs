fn main() {
    print!("{}", meshbench_crds::crds_yaml());
}
