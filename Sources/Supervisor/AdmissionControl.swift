import Logging
import Synchronization
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The supervisor's admission of connections that have not authenticated (`Admission` under
/// a lock): it refuses what the limits refuse (closing the socket unread, one log line per
/// source per interval), follows each admitted connection through its worker's reports, and
/// ends one that has not authenticated by the deadline.
public final class AdmissionControl: Sendable {
    private let admission: Mutex<Admission>
    private let logger: Logger

    public init(limits: Admission.Limits, logger: Logger) {
        admission = Mutex(Admission(limits: limits))
        self.logger = logger
    }

    public var limits: Admission.Limits { admission.withLock { $0.limits } }

    /// What `ctl status` shows.
    public var report: ControlServer.AdmissionReport {
        admission.withLock { a in
            ControlServer.AdmissionReport(
                limits: a.limits.description, perSource: a.limits.perSource,
                deadlineSeconds: a.limits.deadline.inSeconds,
                unauthenticated: a.unauthenticated, admitted: a.admitted, authenticated: a.authenticated,
                refused: Dictionary(uniqueKeysWithValues: Admission.Refusal.allCases.map { ($0.rawValue, a.refused[$0] ?? 0) }))
        }
    }

    /// One admitted connection, from its admission to its end.
    public final class Connection: Sendable {
        let source: String
        private enum Phase { case unauthenticated, authenticated, ended }
        private let phase = Mutex(Phase.unauthenticated)
        private let expired = Atomic<Bool>(false)
        private let control: AdmissionControl
        private let admittedAt = ContinuousClock.now

        init(source: String, control: AdmissionControl) {
            self.source = source
            self.control = control
        }

        /// Whether it is ending for its deadline: the supervisor's timer fired, or (the worker
        /// closing it by the same deadline, usually a moment before that timer) it lived that
        /// long unauthenticated.
        private var pastDeadline: Bool {
            expired.load(ordering: .relaxed) || ContinuousClock.now - admittedAt >= control.limits.deadline - .milliseconds(100)
        }

        /// What the worker's reports do to the count.
        public var events: RolePool.ClientEvents {
            RolePool.ClientEvents(authenticated: { self.authenticated() }, ended: { self.ended() })
        }

        func authenticated() {
            let first = phase.withLock { p in
                guard p == .unauthenticated else { return false }
                p = .authenticated
                return true
            }
            if first { control.admission.withLock { $0.authenticatedConnection(source: source) } }
        }

        /// Its worker is done with it (or it was never handed to one).
        public func ended() {
            let wasCounted = phase.withLock { p in
                defer { p = .ended }
                return p == .unauthenticated
            }
            if wasCounted {
                let expired = pastDeadline
                control.admission.withLock { $0.endedUnauthenticated(source: source, expired: expired) }
            }
        }

        /// After the deadline: still unauthenticated, it is ended (`close`: per client, its
        /// worker; in a pool the worker closes it by the same deadline itself).
        func enforceDeadline(close: (@Sendable () -> Void)?) {
            let deadline = control.limits.deadline
            Task {
                try? await Task.sleep(for: deadline)
                guard phase.withLock({ $0 == .unauthenticated }) else { return }
                expired.store(true, ordering: .relaxed)
                close?()
            }
        }
    }

    /// Admits the accepted `client` from `peer`, or refuses it: closed unread, counted, and
    /// logged once per source per interval. Nil when refused.
    func admit(_ client: FileDescriptor, peer: String) -> Connection? {
        let source = Admission.source(of: peer)
        let (decision, log) = admission.withLock { a -> (Admission.Decision, (log: Bool, suppressed: UInt64)) in
            let decision = a.admit(source: source, chance: Double.random(in: 0..<1))
            guard case .refuse = decision else { return (decision, (false, 0)) }
            return (decision, a.shouldLog(source: source, at: .now))
        }
        guard case .refuse(let reason) = decision else { return Connection(source: source, control: self) }
        try? client.close()
        if log.log {
            let limits = self.limits
            logger.warning("unauthenticated connection refused", metadata: [
                "source": "\(source)", "reason": "\(reason)", "refused_since_last_line": "\(log.suppressed)",
                "max_unauthenticated": "\(limits)", "per_source": "\(limits.perSource)",
            ])
        }
        return nil
    }
}
