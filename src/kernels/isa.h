// Which instruction set the binary kernels run on, chosen at run time (no MXNet types).
//
// Three paths compute the same integers: AVX-512 with VPOPCNTDQ (16 lanes, a popcount
// instruction per lane), AVX2 (8 lanes, popcount by a 16-entry nibble table and vpshufb) and
// scalar (popcnt on one 32-bit word at a time). The library is built for baseline x86-64; the SIMD
// paths live in their own translation units compiled with per-function target attributes, so the
// library loads on any x86-64 CPU and only calls what the CPU has.
//
// The choice is the best path this CPU supports, unless the environment variable BMXNET_ISA
// (scalar | avx2 | avx512, read once per process) asks for another: a request the CPU cannot run
// falls back to the best supported path below it with one warning on stderr, never an illegal
// instruction.
#ifndef BMXNET_KERNELS_ISA_H_
#define BMXNET_KERNELS_ISA_H_

namespace bmx {

enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// "scalar", "avx2", "avx512": the spelling BMXNET_ISA accepts.
const char* isa_name(Isa isa);

// True when this CPU (and OS) can run `isa` and the environment variable BMXNET_CPU_LACKS (a
// comma-separated list such as "avx512,avx2") does not mask it.
bool cpu_supports(Isa isa);

// The path the kernels use now: the override if one is set, else BMXNET_ISA, else the best.
Isa active_isa();

// Forces a path for this process (tests, benchmarks); an unsupported one falls back as
// BMXNET_ISA does. Returns the path now active. Thread-safe; kernels running concurrently finish
// on the path they started with.
Isa set_isa(Isa requested);

// Parses a BMXNET_ISA value; false for anything else (the value is then ignored, with a warning).
bool parse_isa(const char* text, Isa* isa);

// Name of the inner loop of the active path, for reports: "avx512-vpopcntdq", "avx2-vpshufb",
// "scalar-popcnt" or "scalar-portable".
const char* kernel_name();

}  // namespace bmx

#endif  // BMXNET_KERNELS_ISA_H_
