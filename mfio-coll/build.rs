//! Compiles the MPI shim (`src/mpi/shim.c`) with the system MPI's compiler
//! wrapper when the `mpi` feature is on.
//!
//! `mpi-sys` exports neither `MPI_IN_PLACE` nor `MPI_BOTTOM`, whose values
//! differ between implementations (1 in Open MPI, all ones in MPICH), and
//! cannot tell which implementation its bindings were generated for. The
//! shim exports both constants and the name of the implementation whose
//! header it was compiled against; at start-up the crate compares that name
//! with `MPI_Get_library_version` and refuses to run on a mismatch (a
//! stale build directory after switching MPI).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "mpi")]
    mpi_shim();
}

#[cfg(feature = "mpi")]
fn mpi_shim() {
    println!("cargo:rerun-if-changed=src/mpi/shim.c");
    println!("cargo:rerun-if-env-changed=MPICC");
    let lib = match build_probe_mpi::probe() {
        Ok(lib) => lib,
        Err(errors) => {
            let mut text =
                String::from("mfio-coll: no MPI library found (Debian: apt-get install libopenmpi-dev openmpi-bin).\n");
            for (i, err) in errors.iter().enumerate() {
                text.push_str(&format!("  attempt {}: {err}\n", i + 1));
            }
            panic!("{text}");
        }
    };
    let mut build = cc::Build::new();
    build.file("src/mpi/shim.c");
    match &lib.mpicc {
        Some(mpicc) => {
            build.compiler(mpicc);
        }
        None => {
            for dir in &lib.include_paths {
                build.include(dir);
            }
        }
    }
    build.compile("mfio_mpi_shim");
    for dir in &lib.lib_paths {
        println!("cargo:rustc-link-search=native={}", dir.display());
    }
    for name in &lib.libs {
        println!("cargo:rustc-link-lib={name}");
    }
}
