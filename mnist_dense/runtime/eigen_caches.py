"""The cache sizes Eigen blocks TensorFlow's matrix products by: read from the CPU, or pinned.

Eigen cuts every matrix product of TensorFlow's CPU kernels into blocks sized by the L1, L2
and L3 caches, which it reads from the CPU (cpuid) at the first product and keeps in one
static variable, `Eigen::internal::manage_caching_sizes(...)::m_cacheSizes`. The block sizes
are the row and column counts of the oneDNN sgemm calls that do the arithmetic, and oneDNN
sums in another order for other call sizes: a CPU with another L2 cache computes other bits
(docs/reproducibility.md shows it on emulated CPUs).

Eigen has a setter, `Eigen::setCpuCacheSizes`, but TensorFlow exposes no way to call it: each
of its libraries compiles its own copy of the variable, `libtensorflow_cc.so.2`'s (the one
its MatMul kernels read) as a local symbol. So `pin` finds that variable by the library's ELF
symbol table and writes the sizes into it before the first product, marking it initialized,
exactly as the setter would. It refuses, rather than guess, when the symbol is missing (a
TensorFlow build other than the locked one) or a product already ran on the CPU's own sizes.
Linux only, which is where the portable path runs.
"""

import ctypes
import functools
import mmap
import struct
from pathlib import Path

# the libraries of TensorFlow 2.21's wheel that hold a copy of the variable
LIBRARIES = ("libtensorflow_cc.so.2", "libtensorflow_framework.so.2")
VARIABLE = b"_ZZN5Eigen8internal20manage_caching_sizesENS_6ActionEPlS2_S2_E12m_cacheSizes"
GUARD = b"_ZGVZN5Eigen8internal20manage_caching_sizesENS_6ActionEPlS2_S2_E12m_cacheSizes"
QUERY = "_ZN5Eigen8internal15queryCacheSizesERiS1_S1_"  # Eigen's cpuid reader (exported)
ELF64_SYM = [("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2")]
ELF64_SYM += [("value", "<u8"), ("size", "<u8")]
SHT_SYMTAB = 2
Sizes = tuple[int, int, int]  # L1, L2, L3 in bytes


class CachePinError(RuntimeError):
    """The cache sizes could not be pinned (one line)."""


@functools.cache
def symbol_offsets(library: Path, names: tuple[bytes, ...]) -> dict[bytes, int]:
    """{name: its address relative to the library's load address}, from the ELF symbol table
    (local symbols included, which the dynamic linker cannot find); read once per process."""
    import numpy as np  # loaded with TensorFlow already; not at the library's import

    with open(library, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as elf:
        if elf[:5] != b"\x7fELF\x02":
            raise CachePinError(f"{library}: not a 64-bit ELF library")
        (table_at,) = struct.unpack_from("<Q", elf, 0x28)
        entry_size, count = struct.unpack_from("<HH", elf, 0x3A)
        sections = [
            struct.unpack_from("<IIQQQQII", elf, table_at + i * entry_size) for i in range(count)
        ]
        symtab = next((s for s in sections if s[1] == SHT_SYMTAB), None)
        if symtab is None:
            raise CachePinError(f"{library}: no symbol table (a stripped TensorFlow build)")
        strings = sections[symtab[6]]
        symbols = np.frombuffer(elf[symtab[4] : symtab[4] + symtab[5]], ELF64_SYM)
        found = {}
        for name in names:
            at = elf.find(b"\0" + name + b"\0", strings[4], strings[4] + strings[5])
            match = symbols["value"][symbols["name"] == at + 1 - strings[4]] if at >= 0 else []
            if len(match) != 1:
                raise CachePinError(
                    f"{library}: no symbol {name.decode()} (not the locked TensorFlow)"
                )
            found[name] = int(match[0])
        return found


def loaded_libraries() -> dict[str, tuple[int, Path]]:
    """{library name: (load address, path)} of TensorFlow's LIBRARIES in this process."""
    loaded = {}
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[2] == "00000000":
            path = Path(fields[5])
            if path.name in LIBRARIES and path.name not in loaded:
                loaded[path.name] = (int(fields[0].split("-")[0], 16), path)
    return loaded


def _variables() -> list[tuple[str, ctypes.Array, ctypes.c_ubyte]]:
    """(library, its three sizes, its initialization guard) for each loaded copy."""
    loaded = loaded_libraries()
    missing = sorted(set(LIBRARIES) - set(loaded))
    if missing:
        raise CachePinError(f"TensorFlow's {', '.join(missing)} not loaded in this process")
    copies = []
    for name, (base, path) in loaded.items():
        offsets = symbol_offsets(path, (VARIABLE, GUARD))
        sizes = (ctypes.c_long * 3).from_address(base + offsets[VARIABLE])
        copies.append((name, sizes, ctypes.c_ubyte.from_address(base + offsets[GUARD])))
    return copies


def pin(sizes: Sizes) -> None:
    """Make Eigen block every product as on a CPU with these cache sizes, in every library.
    Call it once TensorFlow has loaded and before it computes anything."""
    copies = _variables()
    for name, current, guard in copies:
        if guard.value and tuple(current) != tuple(sizes):
            raise CachePinError(
                f"{name}: Eigen already blocks by other cache sizes "
                f"({format_sizes(tuple(current))}); pin before TensorFlow's first matrix product"
            )
    for _, current, guard in copies:
        current[:] = sizes
        guard.value = 1  # initialized: Eigen never reads the CPU's own sizes over ours


def in_use() -> dict[str, Sizes | None]:
    """{library: the sizes its Eigen blocks by, None until its first product}."""
    return {name: tuple(sizes) if guard.value else None for name, sizes, guard in _variables()}


def of_this_cpu() -> Sizes:
    """The cache sizes this CPU reports, as Eigen reads them (cpuid; 0 where none)."""
    _, path = loaded_libraries()["libtensorflow_framework.so.2"]
    query = getattr(ctypes.CDLL(str(path)), QUERY)
    sizes = [ctypes.c_int() for _ in range(3)]
    query(*(ctypes.byref(size) for size in sizes))
    return tuple(size.value for size in sizes)


def format_sizes(sizes: Sizes) -> str:
    """ "L1 48K, L2 2M, L3 300M"."""
    return ", ".join(f"L{level} {format_size(size)}" for level, size in enumerate(sizes, start=1))


def format_size(size: int) -> str:
    """2097152 -> "2M", 49152 -> "48K"."""
    for unit, scale in (("M", 2**20), ("K", 2**10)):
        if size and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)
