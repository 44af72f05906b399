// LD_PRELOAD shim for tests/test_memory.py: counts heap allocations (malloc, calloc, realloc,
// posix_memalign, aligned_alloc, memalign; operator new goes through malloc) made while code of
// one address range -- a shared library's mappings -- is on the allocating thread's stack.
//
//   alloc_counter_start(lo, hi)   reset the counters and count allocations from [lo, hi)
//   alloc_counter_stop(out)       stop; out[0] = count, out[1] = bytes, out[2] = largest
#define _GNU_SOURCE
#include <execinfo.h>
#include <stddef.h>
#include <stdint.h>

extern void* __libc_malloc(size_t);
extern void* __libc_calloc(size_t, size_t);
extern void* __libc_realloc(void*, size_t);
extern void* __libc_memalign(size_t, size_t);

static volatile uintptr_t range_lo, range_hi;
static volatile int counting;
static size_t count, bytes, largest;
static __thread int inside;  // backtrace() may allocate: do not count (or recurse into) that

static void note(size_t size) {
  if (!counting || inside) return;
  inside = 1;
  void* frames[16];
  const int depth = backtrace(frames, 16);
  for (int i = 1; i < depth; ++i) {
    const uintptr_t address = (uintptr_t)frames[i];
    if (address >= range_lo && address < range_hi) {
      __atomic_add_fetch(&count, 1, __ATOMIC_RELAXED);
      __atomic_add_fetch(&bytes, size, __ATOMIC_RELAXED);
      size_t seen = __atomic_load_n(&largest, __ATOMIC_RELAXED);
      while (size > seen &&
             !__atomic_compare_exchange_n(&largest, &seen, size, 0, __ATOMIC_RELAXED,
                                          __ATOMIC_RELAXED)) {
      }
      break;
    }
  }
  inside = 0;
}

void* malloc(size_t size) { note(size); return __libc_malloc(size); }
void* calloc(size_t n, size_t size) { note(n * size); return __libc_calloc(n, size); }
void* realloc(void* p, size_t size) { note(size); return __libc_realloc(p, size); }
void* aligned_alloc(size_t alignment, size_t size) {
  note(size);
  return __libc_memalign(alignment, size);
}
void* memalign(size_t alignment, size_t size) {
  note(size);
  return __libc_memalign(alignment, size);
}
int posix_memalign(void** out, size_t alignment, size_t size) {
  note(size);
  *out = __libc_memalign(alignment, size);
  return *out ? 0 : 12;  // ENOMEM
}

void alloc_counter_start(uintptr_t lo, uintptr_t hi) {
  void* warm[2];
  backtrace(warm, 2);  // loads the unwinder now, outside any counted allocation
  count = bytes = largest = 0;
  range_lo = lo;
  range_hi = hi;
  counting = 1;
}

void alloc_counter_stop(size_t* out) {
  counting = 0;
  out[0] = count;
  out[1] = bytes;
  out[2] = largest;
}
