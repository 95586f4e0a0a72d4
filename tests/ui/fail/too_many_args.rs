use kconc_runtime::{subscriber, Meta};

#[subscriber(topic = "orders", group = "billing")]
async fn bill(
    _a: Meta, _b: Meta, _c: Meta, _d: Meta, _e: Meta, _f: Meta, _g: Meta, _h: Meta,
    _i: Meta, _j: Meta, _k: Meta, _l: Meta, _m: Meta, _n: Meta, _o: Meta, _p: Meta, _q: Meta,
) {
}

fn main() {}
