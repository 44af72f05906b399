// The kernels' thread pool (parallel.h): one job at a time, handed out in chunks.
//
// A job is published by writing its fields and then a ticket (generation << 16 | threads); a
// worker whose slot is below `threads` enters by counting itself in `inside_` and checking that
// the ticket is still the one it saw, and then takes chunks until the counter runs out. When the
// caller has no chunk left to take it closes the ticket (threads 0: nobody enters any more) and
// waits until every item is done and nobody is inside; only then may the fields change again.
#include "kernels/parallel.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <system_error>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace bmx {
namespace {

// Chunks per thread of a job: enough that a thread slowed down by another process on its core
// leaves most of its share to the others, few enough that taking them costs nothing measurable.
constexpr int64_t kChunksPerThread = 8;

// How long a worker keeps looking for the next job, and a caller for its workers' last chunks,
// before sleeping. The jobs of one operator follow each other within a microsecond or two, so
// this catches them without the wake-up latency; a longer spin would take the core from other
// processes (the libgomp default spins ~100 times longer).
constexpr std::chrono::microseconds kSpin(5);

// A caller that waited longer than this for its workers' last chunks, and longer than half the
// time it worked on the job itself, met a worker the system had taken off its core (another
// process wants it). Waiting for such a worker costs a time slice of milliseconds at every job,
// so the pool then runs its callers' jobs alone for kAlone before trying its workers again.
constexpr std::chrono::microseconds kStall(50);
constexpr std::chrono::milliseconds kAlone(50);

constexpr int kTicketShift = 16;
static_assert(kMaxThreads < (1 << kTicketShift), "the ticket holds the thread count");

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

int clamp_threads(long n) { return static_cast<int>(std::max(1L, std::min<long>(n, kMaxThreads))); }

int environment_threads() {
  if (const char* text = std::getenv("OMP_NUM_THREADS")) {
    char* end = nullptr;
    const long n = std::strtol(text, &end, 10);
    const bool whole_entry = end != text && (*end == '\0' || *end == ',' ||
                                             std::isspace(static_cast<unsigned char>(*end)));
    if (whole_entry && n > 0) return clamp_threads(n);
  }
  cpu_set_t cpus;
  if (sched_getaffinity(0, sizeof cpus, &cpus) == 0) return clamp_threads(CPU_COUNT(&cpus));
  return clamp_threads(static_cast<long>(std::thread::hardware_concurrency()));
}

std::atomic<int> g_requested_threads{0};  // set_num_threads' count; 0: the environment's
std::atomic<int64_t> g_pool_jobs{0};
std::atomic<int> g_settings{0};  // changed by every set_num_threads

// Spins until ready() for up to kSpin; then sleeps on `cv` until it is, counted in `sleepers`
// while asleep. Whoever makes ready() true calls wake() with the same arguments afterwards.
template <typename Ready>
void wait_until(const Ready& ready, std::mutex& mutex, std::condition_variable& cv,
                std::atomic<int>& sleepers) {
  const auto start = std::chrono::steady_clock::now();
  for (int i = 1;; ++i) {
    if (ready()) return;
    cpu_relax();
    if (i % 64 == 0 && std::chrono::steady_clock::now() - start > kSpin) break;
  }
  std::unique_lock<std::mutex> lock(mutex);
  // Counted before the condition is read (both sequentially consistent), so a waker either sees
  // a sleeper or the sleeper sees the new state.
  sleepers.fetch_add(1);
  cv.wait(lock, ready);
  sleepers.fetch_sub(1);
}

void wake(std::mutex& mutex, std::condition_variable& cv, const std::atomic<int>& sleepers) {
  if (sleepers.load() == 0) return;
  // Taking the mutex orders this after a sleeper's check of the condition: it is waiting now.
  { std::lock_guard<std::mutex> lock(mutex); }
  cv.notify_all();
}

class Pool {
 public:
  // Runs the job on the calling thread and up to threads - 1 workers; false, having run
  // nothing, when another caller's job holds the pool (or this thread is inside one).
  bool try_run(int threads, int64_t items, detail::ChunkFn fn, const void* body) {
    if (busy_.load(std::memory_order_relaxed) || busy_.exchange(true, std::memory_order_acquire)) {
      return false;
    }
    const auto start = Clock::now();
    const int settings = g_settings.load(std::memory_order_relaxed);
    if (settings != settings_) alone_until_ = Clock::time_point{};  // a new count: try at once
    settings_ = settings;
    if (start < alone_until_) {
      busy_.store(false, std::memory_order_release);
      return false;
    }
    threads = std::min(threads, 1 + grow(threads - 1));
    fn_ = fn;
    body_ = body;
    items_ = items;
    chunk_ = std::max<int64_t>(1, items / (threads * kChunksPerThread));
    next_.store(0, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    ++generation_;
    g_pool_jobs.fetch_add(1, std::memory_order_relaxed);
    ticket_.store(generation_ << kTicketShift | static_cast<uint64_t>(threads));
    wake(mutex_, wake_workers_, sleeping_workers_);
    work(0);
    ticket_.store(generation_ << kTicketShift);
    const auto worked = Clock::now();
    wait_until([&] { return done_.load() == items_ && inside_.load() == 0; }, mutex_,
               wake_caller_, sleeping_callers_);
    const auto waited = Clock::now() - worked;
    if (waited > kStall && waited > (worked - start) / 2) alone_until_ = worked + waited + kAlone;
    busy_.store(false, std::memory_order_release);
    return true;
  }

 private:
  // Starts workers up to `wanted` in all (only ever grows; allocates only then). Returns how many
  // there are.
  int grow(int wanted) {
    while (workers_ < wanted) {
      try {
        std::thread(&Pool::worker, this, workers_ + 1, ticket_.load()).detach();
      } catch (const std::system_error&) {
        break;  // no more threads to be had: run with those there are
      }
      ++workers_;
    }
    return std::min(workers_, wanted);
  }

  void work(int slot) {
    for (;;) {
      const int64_t begin = next_.fetch_add(chunk_, std::memory_order_relaxed);
      if (begin >= items_) return;
      const int64_t end = std::min(items_, begin + chunk_);
      fn_(body_, begin, end, slot);
      done_.fetch_add(end - begin);  // after the chunk's outputs are written
    }
  }

  void worker(int slot, uint64_t seen) {
    for (;;) {
      wait_until([&] { return ticket_.load() != seen; }, mutex_, wake_workers_,
                 sleeping_workers_);
      const uint64_t ticket = ticket_.load();
      seen = ticket;
      if (static_cast<int>(ticket & ((1u << kTicketShift) - 1)) <= slot) continue;
      inside_.fetch_add(1);
      // Still the ticket we saw: the caller has not closed the job, and will wait for us.
      if (ticket_.load() == ticket) work(slot);
      if (inside_.fetch_sub(1) == 1) wake(mutex_, wake_caller_, sleeping_callers_);
    }
  }

  using Clock = std::chrono::steady_clock;

  std::atomic<bool> busy_{false};
  int workers_ = 0;            // changed by the caller holding busy_ only
  uint64_t generation_ = 0;    // likewise
  Clock::time_point alone_until_{};  // likewise
  int settings_ = 0;                 // likewise: the g_settings alone_until_ was set under
  // The job: written by the caller while nobody is inside, read by the threads inside.
  detail::ChunkFn fn_ = nullptr;
  const void* body_ = nullptr;
  int64_t items_ = 0, chunk_ = 1;
  std::atomic<int64_t> next_{0}, done_{0};
  std::atomic<uint64_t> ticket_{0};
  std::atomic<int> inside_{0};
  // Sleeping: workers waiting for a ticket, the caller waiting for its job to finish.
  std::mutex mutex_;
  std::condition_variable wake_workers_, wake_caller_;
  std::atomic<int> sleeping_workers_{0}, sleeping_callers_{0};
};

// The process's pool, created on first use and never destroyed (its workers sleep until the
// process exits). A forked child has none of the parent's workers: it forgets the parent's pool
// (leaked, a few hundred bytes) and starts its own.
std::atomic<Pool*> g_pool{nullptr};

void forget_pool_in_child() { g_pool.store(nullptr); }

Pool& pool() {
  Pool* existing = g_pool.load(std::memory_order_acquire);
  if (existing != nullptr) return *existing;
  static const bool registered = pthread_atfork(nullptr, nullptr, forget_pool_in_child) == 0;
  (void)registered;
  Pool* created = new Pool();
  if (g_pool.compare_exchange_strong(existing, created)) return *created;
  delete created;  // another thread was first
  return *existing;
}

}  // namespace

int num_threads() {
  const int requested = g_requested_threads.load(std::memory_order_relaxed);
  if (requested > 0) return requested;
  static const int from_environment = environment_threads();
  return from_environment;
}

int set_num_threads(int n) {
  const int previous = num_threads();
  g_requested_threads.store(n > 0 ? clamp_threads(n) : 0, std::memory_order_relaxed);
  g_settings.fetch_add(1, std::memory_order_relaxed);
  return previous;
}

int64_t pool_jobs() { return g_pool_jobs.load(std::memory_order_relaxed); }

namespace detail {

void run_parallel(int threads, int64_t items, ChunkFn fn, const void* body) {
  threads = static_cast<int>(std::min<int64_t>(std::min(threads, kMaxThreads), items));
  if (threads > 1 && pool().try_run(threads, items, fn, body)) return;
  fn(body, 0, items, 0);
}

}  // namespace detail
}  // namespace bmx
