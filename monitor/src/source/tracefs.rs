//! Tracepoint record layouts, read at start-up from
//! `<tracefs>/events/<category>/<name>/format`, so that the programs never depend on
//! offsets compiled for another kernel. Also mounts tracefs when the host has not.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use monitor_common::{ProbeConfig, TupleOffsets};

use super::probes::{Hook, Probe};

const MOUNT_POINTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("tracefs is not mounted and mounting it on /sys/kernel/tracing failed: {0}")]
    Mount(#[source] nix::Error),
    #[error(
        "this kernel lacks tracepoint {category}:{name} (no {path}); connmon cannot run here (see README: minimum kernel)"
    )]
    MissingTracepoint {
        category: String,
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tracepoint {category}:{name} has no field `{field}` in its format file")]
    MissingField {
        category: String,
        name: String,
        field: &'static str,
    },
    #[error("tracepoint {category}:{name} field `{field}` is {got} bytes, expected {want}")]
    FieldSize {
        category: String,
        name: String,
        field: &'static str,
        got: u32,
        want: u32,
    },
    #[error("tracepoint {category}:{name}: malformed format line {line:?}")]
    Malformed {
        category: String,
        name: String,
        line: String,
    },
}

/// Returns the tracefs mount point, mounting tracefs on `/sys/kernel/tracing` if neither
/// usual place has it. The second value says whether this call mounted it.
pub fn ensure_mounted() -> Result<(PathBuf, bool), TracefsError> {
    if let Some(found) = MOUNT_POINTS
        .iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
    {
        return Ok((found.to_path_buf(), false));
    }
    let target = Path::new(MOUNT_POINTS[0]);
    nix::mount::mount(
        Some("tracefs"),
        target,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(TracefsError::Mount)?;
    Ok((target.to_path_buf(), true))
}

/// One field of a format file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// The fields of one tracepoint, by name.
#[derive(Debug)]
pub struct Format {
    category: String,
    name: String,
    fields: HashMap<String, Field>,
}

impl Format {
    /// Parses the text of a format file.
    pub fn parse(category: &str, name: &str, text: &str) -> Result<Self, TracefsError> {
        let mut fields = HashMap::new();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("field:"))
        {
            let malformed = || TracefsError::Malformed {
                category: category.to_owned(),
                name: name.to_owned(),
                line: line.to_owned(),
            };
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            for part in line.split(';').map(str::trim) {
                if let Some(d) = part.strip_prefix("field:") {
                    decl = Some(d);
                } else if let Some(o) = part.strip_prefix("offset:") {
                    offset = o.parse::<u32>().ok();
                } else if let Some(s) = part.strip_prefix("size:") {
                    size = s.parse::<u32>().ok();
                }
            }
            let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
                return Err(malformed());
            };
            let ident = decl.rsplit([' ', '*']).next().unwrap_or_default();
            let ident = ident.split('[').next().unwrap_or_default();
            if ident.is_empty() {
                return Err(malformed());
            }
            fields.insert(ident.to_owned(), Field { offset, size });
        }
        Ok(Format {
            category: category.to_owned(),
            name: name.to_owned(),
            fields,
        })
    }

    /// Reads and parses `<tracefs>/events/<category>/<name>/format`.
    pub fn read(tracefs: &Path, (category, name): (&str, &str)) -> Result<Self, TracefsError> {
        let path = tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = fs::read_to_string(&path).map_err(|source| TracefsError::MissingTracepoint {
            category: category.to_owned(),
            name: name.to_owned(),
            path: path.clone(),
            source,
        })?;
        Self::parse(category, name, &text)
    }

    /// The offset of `field`, checking that it has the size the programs read.
    pub fn offset(&self, field: &'static str, want: u32) -> Result<u32, TracefsError> {
        let f = self
            .fields
            .get(field)
            .ok_or_else(|| TracefsError::MissingField {
                category: self.category.clone(),
                name: self.name.clone(),
                field,
            })?;
        if f.size != want {
            return Err(TracefsError::FieldSize {
                category: self.category.clone(),
                name: self.name.clone(),
                field,
                got: f.size,
                want,
            });
        }
        Ok(f.offset)
    }

    /// The offsets of the TCP 4-tuple, which every tracepoint used here carries.
    pub fn tuple(&self) -> Result<TupleOffsets, TracefsError> {
        Ok(TupleOffsets {
            sport: self.offset("sport", 2)?,
            dport: self.offset("dport", 2)?,
            family: self.offset("family", 2)?,
            saddr: self.offset("saddr", 4)?,
            daddr: self.offset("daddr", 4)?,
            saddr_v6: self.offset("saddr_v6", 16)?,
            daddr_v6: self.offset("daddr_v6", 16)?,
        })
    }
}

/// Fills the tracepoint part of the programs' configuration: each probe's offsets from
/// its hook's format file, read by `format`.
pub fn probe_offsets<'p>(
    probes: impl IntoIterator<Item = &'p Probe>,
    mut format: impl FnMut(&str, &str) -> Result<Format, TracefsError>,
) -> Result<ProbeConfig, TracefsError> {
    let mut config = ProbeConfig::default();
    for probe in probes {
        match probe.hook {
            Hook::TracePoint { category, name } => {
                (probe.offsets)(&format(category, name)?, &mut config)?;
            }
        }
    }
    Ok(config)
}

/// Reads the format files of `probes` under `tracefs`.
pub fn read_probe_offsets<'p>(
    tracefs: &Path,
    probes: impl IntoIterator<Item = &'p Probe>,
) -> Result<ProbeConfig, TracefsError> {
    probe_offsets(probes, |category, name| {
        Format::read(tracefs, (category, name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Format files captured from a 6.18 kernel.
    const SET_STATE_TXT: &str = include_str!("testdata/inet_sock_set_state.format");
    const RESET_TXT: &str = include_str!("testdata/tcp_receive_reset.format");
    const RETRANSMIT_TXT: &str = include_str!("testdata/tcp_retransmit_skb.format");
    const ERROR_TXT: &str = include_str!("testdata/inet_sk_error_report.format");

    fn all() -> ProbeConfig {
        probe_offsets(super::super::probes::PROBES, |category, name| {
            let text = match name {
                "inet_sock_set_state" => SET_STATE_TXT,
                "tcp_receive_reset" => RESET_TXT,
                "tcp_retransmit_skb" => RETRANSMIT_TXT,
                "inet_sk_error_report" => ERROR_TXT,
                other => panic!("no captured format file for {category}:{other}"),
            };
            Format::parse(category, name, text)
        })
        .expect("every probe's fields are in the captured format files")
    }

    #[test]
    fn offsets_from_real_format_files() {
        let c = all();
        assert_eq!(
            (
                c.set_state_skaddr,
                c.set_state_oldstate,
                c.set_state_newstate,
                c.set_state_protocol
            ),
            (8, 16, 20, 30)
        );
        assert_eq!(
            c.set_state,
            TupleOffsets {
                sport: 24,
                dport: 26,
                family: 28,
                saddr: 32,
                daddr: 36,
                saddr_v6: 40,
                daddr_v6: 56
            }
        );
        assert_eq!(
            (
                c.receive_reset_skaddr,
                c.receive_reset.sport,
                c.receive_reset.daddr_v6
            ),
            (8, 16, 46)
        );
        assert_eq!(
            (c.retransmit_skaddr, c.retransmit_state, c.retransmit.family),
            (16, 24, 32)
        );
        assert_eq!(
            (
                c.error_report_error,
                c.error_report_protocol,
                c.error_report.saddr
            ),
            (8, 18, 20)
        );
    }

    #[test]
    fn pointer_fields_and_arrays_are_named_correctly() {
        let f = Format::parse("sock", "inet_sock_set_state", SET_STATE_TXT).unwrap();
        assert_eq!(f.fields["skaddr"], Field { offset: 8, size: 8 });
        assert_eq!(
            f.fields["saddr_v6"],
            Field {
                offset: 40,
                size: 16
            }
        );
        assert_eq!(f.fields["common_pid"], Field { offset: 4, size: 4 });
    }

    #[test]
    fn missing_field_names_the_tracepoint_and_field() {
        let text = SET_STATE_TXT.replace("protocol", "proto");
        let f = Format::parse("sock", "inet_sock_set_state", &text).unwrap();
        let err = f.offset("protocol", 2).unwrap_err().to_string();
        assert_eq!(
            err,
            "tracepoint sock:inet_sock_set_state has no field `protocol` in its format file"
        );
    }

    #[test]
    fn wrong_size_is_rejected() {
        let text = SET_STATE_TXT.replace(
            "__u16 sport;\toffset:24;\tsize:2;",
            "__u32 sport;\toffset:24;\tsize:4;",
        );
        let f = Format::parse("sock", "inet_sock_set_state", &text).unwrap();
        let err = f.offset("sport", 2).unwrap_err().to_string();
        assert!(
            err.contains("field `sport` is 4 bytes, expected 2"),
            "{err}"
        );
    }

    #[test]
    fn malformed_line_is_an_error() {
        let err = Format::parse("tcp", "x", "format:\n\tfield:int a;\toffset:zz;\tsize:4;\n")
            .unwrap_err();
        assert!(matches!(err, TracefsError::Malformed { .. }), "{err}");
    }

    #[test]
    fn missing_tracepoint_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("connmon-tracefs-test-{}", std::process::id()));
        let err = Format::read(&dir, ("tcp", "no_such_tracepoint"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("this kernel lacks tracepoint tcp:no_such_tracepoint")
                && err.ends_with("connmon cannot run here (see README: minimum kernel)"),
            "{err}"
        );
    }
}
