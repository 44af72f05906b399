#include "kernels/isa.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "kernels/conv_isa.h"

namespace bmx {
namespace {

std::atomic<int> g_active{-1};  // the active Isa, -1 until first use
std::mutex g_choose_mutex;

Isa best_supported() {
  if (cpu_supports(Isa::kAvx512)) return Isa::kAvx512;
  if (cpu_supports(Isa::kAvx2)) return Isa::kAvx2;
  return Isa::kScalar;
}

// The requested path, or the best supported one below it, warning when that is not the request.
Isa fall_back(Isa requested, const char* source) {
  Isa isa = requested;
  while (!cpu_supports(isa)) isa = static_cast<Isa>(static_cast<int>(isa) - 1);
  if (isa != requested) {
    std::fprintf(stderr,
                 "bmxnet_ext: %s requests the %s kernels, which this CPU cannot run; using %s\n",
                 source, isa_name(requested), isa_name(isa));
  }
  return isa;
}

Isa from_environment() {
  const char* text = std::getenv("BMXNET_ISA");
  if (text == nullptr || *text == '\0') return best_supported();
  Isa requested;
  if (!parse_isa(text, &requested)) {
    std::fprintf(stderr,
                 "bmxnet_ext: ignoring BMXNET_ISA='%s' (expected scalar, avx2 or avx512); "
                 "using %s\n", text, isa_name(best_supported()));
    return best_supported();
  }
  return fall_back(requested, "BMXNET_ISA");
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

bool parse_isa(const char* text, Isa* isa) {
  for (Isa candidate : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (std::strcmp(text, isa_name(candidate)) == 0) {
      *isa = candidate;
      return true;
    }
  }
  return false;
}

// BMXNET_CPU_LACKS=avx512[,avx2]: treat the CPU as lacking those paths (tests of the fallback;
// a work-around should a CPU or hypervisor report features it does not run correctly).
static bool masked_by_environment(Isa isa) {
  const char* text = std::getenv("BMXNET_CPU_LACKS");
  if (text == nullptr) return false;
  const char* name = isa_name(isa);
  const size_t length = std::strlen(name);
  for (const char* p = std::strstr(text, name); p != nullptr; p = std::strstr(p + 1, name)) {
    const bool starts = p == text || p[-1] == ',';
    const bool ends = p[length] == '\0' || p[length] == ',';
    if (starts && ends) return true;
  }
  return false;
}

bool cpu_supports(Isa isa) {
  if (isa == Isa::kScalar) return true;
  if (masked_by_environment(isa)) return false;
#if defined(__x86_64__) && defined(__GNUC__)
  // __builtin_cpu_supports checks the CPUID bits and that the OS saves the wide registers.
  __builtin_cpu_init();
  if (isa == Isa::kAvx2) {
    return avx2_kernels() != nullptr && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma");
  }
  return avx512_kernels() != nullptr && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512vpopcntdq");
#else
  return false;
#endif
}

Isa active_isa() {
  int active = g_active.load(std::memory_order_acquire);
  if (active < 0) {
    std::lock_guard<std::mutex> lock(g_choose_mutex);  // one environment read, one warning
    active = g_active.load(std::memory_order_acquire);
    if (active < 0) {
      active = static_cast<int>(from_environment());
      g_active.store(active, std::memory_order_release);
    }
  }
  return static_cast<Isa>(active);
}

Isa set_isa(Isa requested) {
  const Isa isa = fall_back(requested, "set_isa");
  g_active.store(static_cast<int>(isa), std::memory_order_release);
  return isa;
}

const IsaKernels& active_kernels() {
  switch (active_isa()) {
    case Isa::kAvx512: return *avx512_kernels();
    case Isa::kAvx2: return *avx2_kernels();
    default: return scalar_kernels();
  }
}

const char* kernel_name() { return active_kernels().name; }

}  // namespace bmx
