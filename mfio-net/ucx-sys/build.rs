//! Finds the system UCX with pkg-config and generates bindings to
//! `<ucp/api/ucp.h>` with bindgen. No copy of UCX is bundled: install
//! `libucx-dev` (Debian) or point `PKG_CONFIG_PATH` at another UCX.

use std::env;
use std::path::PathBuf;

/// The oldest UCX with every `_nbx` call mfio-net uses.
const MIN_UCX: &str = "1.12";

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    let ucx = match pkg_config::Config::new().atleast_version(MIN_UCX).probe("ucx") {
        Ok(lib) => lib,
        Err(err) => {
            eprintln!(
                "mfio-ucx-sys: UCX >= {MIN_UCX} was not found by pkg-config ({err}).\n\
                 Install it (Debian: apt-get install libucx-dev) or set PKG_CONFIG_PATH."
            );
            std::process::exit(1);
        }
    };
    let mut builder = bindgen::Builder::default()
        .header("wrapper.h")
        .allowlist_function("ucp_.*")
        .allowlist_function("ucs_status_string")
        .allowlist_type("ucp_.*")
        .allowlist_type("ucs_.*")
        .allowlist_var("UCP_.*")
        .allowlist_var("UCS_.*")
        // Integer constants, never Rust enums: a value UCX adds later must
        // not be undefined behaviour on our side.
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for dir in &ucx.include_paths {
        builder = builder.clang_arg(format!("-I{}", dir.display()));
    }
    let bindings = match builder.generate() {
        Ok(b) => b,
        Err(err) => {
            eprintln!("mfio-ucx-sys: bindgen failed on <ucp/api/ucp.h>: {err} (is libclang-dev installed?)");
            std::process::exit(1);
        }
    };
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("bindings.rs");
    if let Err(err) = bindings.write_to_file(&out) {
        eprintln!("mfio-ucx-sys: cannot write {}: {err}", out.display());
        std::process::exit(1);
    }
}
