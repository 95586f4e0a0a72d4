use kconc_runtime::subscriber;

#[subscriber(topic = "orders", group = "billing")]
struct Biller;

fn main() {}
