//! Man pages and shell completions, generated from the real command line (the `clap`
//! definition in `main.rs`) so that they cannot drift from it. `connmon generate-assets
//! --out DIR` writes them; `cargo xtask package` puts them into the `.deb`.

use std::path::{Path, PathBuf};

use clap_complete::Shell;

#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {source}")]
pub struct AssetError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The shells whose completions are shipped, with the file name each one's loader
/// expects under its Debian directory.
pub const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "completions/bash/connmon"),
    (Shell::Zsh, "completions/zsh/_connmon"),
    (Shell::Fish, "completions/fish/connmon.fish"),
];

/// Writes `man/connmon.1`, one `man/connmon-<sub>.1` per visible subcommand, and the
/// completion scripts of [`SHELLS`] under `out`. Returns the files written.
pub fn write(cmd: clap::Command, out: &Path) -> Result<Vec<PathBuf>, AssetError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AssetError { path, source }
    };
    let mut written = Vec::new();
    let man = out.join("man");
    std::fs::create_dir_all(&man).map_err(err(&man))?;
    clap_mangen::generate_to(cmd.clone(), &man).map_err(err(&man))?;
    for entry in std::fs::read_dir(&man).map_err(err(&man))? {
        written.push(entry.map_err(err(&man))?.path());
    }
    for (shell, file) in SHELLS {
        let path = out.join(file);
        let dir = path.parent().expect("completion files are in a directory");
        std::fs::create_dir_all(dir).map_err(err(dir))?;
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "connmon", &mut script);
        std::fs::write(&path, script).map_err(err(&path))?;
        written.push(path);
    }
    written.sort();
    Ok(written)
}
