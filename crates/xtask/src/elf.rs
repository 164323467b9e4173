//! What the binary needs at run time, read from its ELF header: its architecture, its program
//! interpreter (the dynamic loader) and the shared libraries it names (`DT_NEEDED`).

use anyhow::{Context, bail};
use object::read::elf::{Dyn as _, FileHeader as _, ProgramHeader as _};

/// An architecture the image can be built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arch {
    /// OCI's name (`amd64`).
    pub oci: &'static str,
    /// Debian's name (`amd64`).
    pub debian: &'static str,
    /// Debian's multiarch directory under `/lib`.
    pub triplet: &'static str,
}

/// x86-64.
pub const AMD64: Arch = Arch { oci: "amd64", debian: "amd64", triplet: "x86_64-linux-gnu" };
/// 64-bit Arm.
pub const ARM64: Arch = Arch { oci: "arm64", debian: "arm64", triplet: "aarch64-linux-gnu" };

/// The binary's run-time needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needs {
    /// Its architecture.
    pub arch: Arch,
    /// Its program interpreter, an absolute path (`/lib64/ld-linux-x86-64.so.2`); none for a
    /// static binary.
    pub interpreter: Option<String>,
    /// The sonames of the libraries it links (`libc.so.6`).
    pub libraries: Vec<String>,
}

/// Reads `binary`'s needs (a 64-bit little-endian ELF executable).
pub fn needs(binary: &[u8]) -> anyhow::Result<Needs> {
    type Header = object::elf::FileHeader64<object::Endianness>;
    let header = Header::parse(binary).context("not a 64-bit ELF file")?;
    let endian = header.endian()?;
    let arch = match header.e_machine(endian) {
        object::elf::EM_X86_64 => AMD64,
        object::elf::EM_AARCH64 => ARM64,
        other => bail!("ELF machine {other} is not one the image is built for (x86-64, aarch64)"),
    };
    let mut interpreter = None;
    for segment in header.program_headers(endian, binary)? {
        if let Some(path) = segment.interpreter(endian, binary)? {
            interpreter = Some(String::from_utf8(path.to_vec()).context("the interpreter path is not UTF-8")?);
        }
    }
    let sections = header.sections(endian, binary)?;
    let mut libraries = Vec::new();
    if let Some((entries, link)) = sections.dynamic(endian, binary)? {
        let strings = sections.strings(endian, binary, link)?;
        for entry in entries {
            if entry.d_tag(endian) == object::elf::DT_NEEDED {
                let name = entry.string(endian, strings)?;
                libraries.push(String::from_utf8(name.to_vec()).context("a library name is not UTF-8")?);
            }
        }
    }
    Ok(Needs { arch, interpreter, libraries })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test's own executable is a dynamically linked binary of the host, like meshroot.
    #[test]
    fn a_host_binary_needs_libc_and_the_loader() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let needs = needs(&me).unwrap();
        assert!(needs.libraries.iter().any(|l| l == "libc.so.6"), "{needs:?}");
        let interpreter = needs.interpreter.unwrap();
        assert!(interpreter.starts_with('/') && interpreter.contains("ld-linux"), "{interpreter}");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(needs.arch, AMD64);
    }

    #[test]
    fn what_is_not_an_elf_executable_is_refused() {
        assert!(needs(b"#!/bin/sh\necho hi\n").is_err());
        assert!(needs(&[]).is_err());
    }
}
