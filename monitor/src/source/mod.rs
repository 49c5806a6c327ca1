//! The kernel side of the agent: loading and attaching the eBPF programs and turning
//! ring-buffer records into [`event::KernelEvent`]s.

pub mod btf;
pub mod cgroup;
pub mod event;
pub mod features;
pub mod kernel;
pub mod poll;
pub mod probes;
