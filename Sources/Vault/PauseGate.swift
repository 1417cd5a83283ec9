import Synchronization

/// Output flow of one attachment: open, or paused by the client until it resumes.
final class PauseGate: Sendable {
    private let state = Mutex<(paused: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func pause() { state.withLock { $0.paused = true } }

    func resume() {
        let waiters = state.withLock { s in
            defer { s = (false, []) }
            return s.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    func waitWhilePaused() async {
        await withCheckedContinuation { continuation in
            let run = state.withLock { s in
                guard s.paused else { return true }
                s.waiters.append(continuation)
                return false
            }
            if run { continuation.resume() }
        }
    }
}
