//! Writes the `#[subscriber]` attribute's documented list of options from
//! the settings table (`kconc-options`), so its rustdoc names every option
//! with its value, default and meaning without a copy kept by hand.

use std::io::{Error, ErrorKind};

fn main() -> std::io::Result<()> {
    let mut doc = String::from(
        "Options (each is also the `kconc_runtime::Subscriber` builder method of the same name, and \
         the settable ones `--set NAME.KEY=VALUE` keys):\n\n",
    );
    for s in kconc_options::attribute_options() {
        let value = s.written_example();
        let default = match s.default {
            "" => String::new(),
            default => format!(" Default: {default}."),
        };
        doc.push_str(&format!("- `{} = {value}`: {}.{default}\n", s.key, s.summary()));
    }
    let out = std::env::var_os("OUT_DIR").ok_or_else(|| Error::new(ErrorKind::NotFound, "OUT_DIR is not set"))?;
    std::fs::write(std::path::Path::new(&out).join("options.md"), doc)?;
    println!("cargo::rerun-if-changed=build.rs");
    Ok(())
}
