import Foundation
import Synchronization

/// A persistent pool of worker threads. `parallelFor` hands out indices dynamically to the workers and
/// the calling thread, and returns when all are done. Threads are created once, never per call.
///
/// Re-entrant use (a `parallelFor` inside a job, or two callers at once) runs the inner loop serially on
/// the calling thread instead of deadlocking.
public final class ThreadPool: @unchecked Sendable {
    /// Number of threads doing work in a `parallelFor`, the caller included.
    public let threadCount: Int
    private let shared: Shared

    /// State shared with the workers (they hold it, not the pool, so the pool can be released).
    private final class Shared: @unchecked Sendable {
        let condition = NSCondition()
        var generation = 0
        var job: ((Int, Int) -> Void)?
        var jobCount = 0
        var workersActive = 0
        var shuttingDown = false
        let nextIndex = Atomic<Int>(0)
        let busy = Atomic<Bool>(false)

        func drain(_ body: (Int, Int) -> Void, _ count: Int, thread: Int) {
            while true {
                let i = nextIndex.wrappingAdd(1, ordering: .relaxed).oldValue
                if i >= count { return }
                body(i, thread)
            }
        }

        func workerLoop(_ thread: Int) {
            var seen = 0
            while true {
                condition.lock()
                while generation == seen { condition.wait() }
                seen = generation
                if shuttingDown { condition.unlock(); return }
                var body = job
                let count = jobCount
                condition.unlock()

                if let b = body { drain(b, count, thread: thread) }
                body = nil   // release the job before reporting done: the caller's closure must not escape

                condition.lock()
                workersActive -= 1
                if workersActive == 0 { condition.broadcast() }
                condition.unlock()
            }
        }
    }

    /// All online cores.
    public static var defaultThreadCount: Int { max(1, ProcessInfo.processInfo.activeProcessorCount) }

    public init(threads: Int = ThreadPool.defaultThreadCount) {
        threadCount = max(1, threads)
        let shared = Shared()
        self.shared = shared
        for w in 1..<threadCount {
            let t = Thread { shared.workerLoop(w) }
            t.name = "llamaprobe-worker-\(w)"
            t.stackSize = 1 << 20
            t.start()
        }
    }

    deinit {
        shared.condition.lock()
        shared.shuttingDown = true
        shared.generation += 1
        shared.condition.broadcast()
        shared.condition.unlock()
    }

    /// Runs `body(i)` for every i in 0..<count across the pool.
    public func parallelFor(_ count: Int, _ body: (Int) -> Void) {
        parallelFor(count) { i, _ in body(i) }
    }

    /// Runs `body(i, thread)` for every i in 0..<count; `thread` in 0..<threadCount identifies the
    /// thread running it (for per-thread scratch space). The serial fallback runs everything as thread 0.
    public func parallelFor(_ count: Int, _ body: (_ index: Int, _ thread: Int) -> Void) {
        if count <= 0 { return }
        let s = shared
        if threadCount == 1 || count == 1
            || !s.busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged {
            for i in 0..<count { body(i, 0) }
            return
        }
        withoutActuallyEscaping(body) { body in
            s.condition.lock()
            s.job = body
            s.jobCount = count
            s.nextIndex.store(0, ordering: .relaxed)
            s.workersActive = threadCount - 1
            s.generation += 1
            s.condition.broadcast()
            s.condition.unlock()

            s.drain(body, count, thread: 0)

            s.condition.lock()
            while s.workersActive > 0 { s.condition.wait() }
            s.job = nil
            s.condition.unlock()
        }
        s.busy.store(false, ordering: .releasing)
    }

    /// Splits 0..<count into at most `threadCount * chunksPerThread` contiguous ranges and runs them.
    public func parallelRanges(_ count: Int, chunksPerThread: Int = 1, minChunk: Int = 1,
                               _ body: (Range<Int>) -> Void) {
        if count <= 0 { return }
        let chunks = max(1, min(threadCount * chunksPerThread, count / max(1, minChunk)))
        parallelFor(chunks) { c in
            let lo = count * c / chunks, hi = count * (c + 1) / chunks
            if lo < hi { body(lo..<hi) }
        }
    }
}
