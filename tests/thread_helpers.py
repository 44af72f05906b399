"""Running test work in several Python threads released together, without hanging the suite."""
import threading

JOIN_TIMEOUT_S = 120


def run_in_threads(work, count):
    """Calls ``work(i)`` for ``i`` in ``range(count)``, each in its own thread, all released at
    once by a barrier; returns the results in thread order and re-raises a thread's exception.

    Daemon threads joined with a timeout: a deadlock fails the test instead of hanging pytest.
    """
    results, errors = [None] * count, [None] * count
    barrier = threading.Barrier(count)

    def run(i):
        barrier.wait()
        try:
            results[i] = work(i)
        except BaseException as err:  # reported in the test's thread below
            errors[i] = err

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=JOIN_TIMEOUT_S)
    stuck = [i for i, thread in enumerate(threads) if thread.is_alive()]
    assert not stuck, f"threads {stuck} still running after {JOIN_TIMEOUT_S} s: deadlock"
    for err in errors:
        if err is not None:
            raise err
    return results
