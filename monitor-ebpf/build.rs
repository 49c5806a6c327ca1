//! Rebuild the eBPF object when the `bpf-linker` on PATH changes (it is an undeclared
//! build dependency; see aya-template).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
