// The runtime under another name. Cargo refuses to depend on `kconc-runtime`
// twice under two names, so the rename is made with `extern crate`, which
// puts the alias in the extern prelude as a Cargo rename would. `crate = ".."`
// says where the generated code finds the runtime, with or without a leading
// `::`, from the crate root or a module. (`fail/bad_crate_path.rs` checks that
// the path given is the one used.)
extern crate kconc_runtime as kconc_renamed;

use kconc_renamed::{subscriber, Message};

#[subscriber(topic = "orders", group = "billing", crate = "kconc_renamed")]
async fn bill(_order: Message) -> Result<(), std::io::Error> {
    Ok(())
}

mod audit {
    #[kconc_renamed::subscriber(topic = "orders", group = "audit", crate = "::kconc_renamed")]
    async fn audit(_order: kconc_renamed::Message) {}
}

fn main() {}
