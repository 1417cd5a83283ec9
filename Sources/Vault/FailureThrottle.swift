import RoleProtocol
import Synchronization

/// Spaces events at least `interval` apart: each caller waits for the next free slot.
final class FailureThrottle: Sendable {
    private let interval: Duration
    private let next = Mutex<ContinuousClock.Instant?>(nil)

    init(interval: Duration) { self.interval = interval }

    func wait() async {
        let now = ContinuousClock.now
        let slot = next.withLock { next in
            let slot = max(now, next ?? now)
            next = slot + interval
            return slot
        }
        if slot > now { await Wait.sleep(for: slot - now) }
    }
}
