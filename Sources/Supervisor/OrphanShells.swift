import CShim
import Circuits
import Logging
import Processes
import RoleProtocol
import Synchronization
import SystemCalls
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Shells whose nursery died. The supervisor is a subreaper, so they become its children: it
/// reaps them here and gives each nursery after it a pidfd of every live one (so the vault
/// may still have it signalled) and the end of every one that ended (so the vault hears of
/// it), through `SupervisorToNursery`. A shell is taken only once the supervisor has checked,
/// through a pidfd, that the process is its own child: a pid the old nursery reaped and the
/// kernel gave to someone else is left alone.
final class OrphanShells: Sendable {
    private struct Orphan {
        /// Closed once the shell has been reaped.
        var pidfd: FileDescriptor?
        /// Set once reaped; reported to a nursery, then forgotten.
        var exit: Exit?
    }

    private struct State {
        var orphans: [pid_t: Orphan] = [:]
        /// The nursery the orphans are given to, while one runs.
        var nursery: RoleTransport?
    }

    private let state = Mutex(State())
    private let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    /// Shells taken over and not yet ended.
    var count: Int { state.withLock { $0.orphans.values.filter { $0.exit == nil }.count } }

    /// The nursery that started `shells` died: takes over those that are now this process's
    /// children.
    func takeOver(_ shells: [pid_t]) {
        for pid in shells where state.withLock({ $0.orphans[pid] == nil }) {
            let pidfd = cloister_pidfd_open(pid)
            guard pidfd >= 0 else {
                logger.info("a shell of the nursery that died is gone", metadata: ["shell": "\(pid)", "error": "\(SystemCallError(call: "pidfd_open", errno: Errno(rawValue: errno)))"])
                continue
            }
            var info = siginfo_t()
            // P_PIDFD with WNOWAIT: whether it is our child, alive or a zombie, reaping nothing.
            guard waitid(idtype_t(rawValue: 3), id_t(pidfd), &info, WEXITED | WNOHANG | WNOWAIT) == 0 else {
                let error = SystemCallError(call: "waitid(P_PIDFD)", errno: Errno(rawValue: errno))
                close(pidfd)
                logger.warning("a shell of the nursery that died is not this process's child; left alone",
                               metadata: ["shell": "\(pid)", "error": "\(error)"])
                continue
            }
            state.withLock { $0.orphans[pid] = Orphan(pidfd: FileDescriptor(rawValue: pidfd)) }
            logger.info("shell taken over from the nursery that died", metadata: ["shell": "\(pid)"])
            Reaper.shared.watch(pid: pid) { [self] termination in
                let exit: Exit = switch termination {
                case .exited(let code)?: .status(code)
                case .signaled(let signal)?: .signal(signal)
                case nil: .signal(0)
                }
                logger.info("taken-over shell reaped", metadata: ["shell": "\(pid)", "exit": "\(exit)"])
                let nursery = state.withLock { s -> RoleTransport? in
                    s.orphans[pid]?.exit = exit
                    return s.nursery
                }
                if let nursery { Task { await self.report(pid, to: nursery) } }
            }
        }
    }

    /// Shells a server before this one took over (`Handover`): still this process's
    /// children (an upgrade keeps the process), or already reaped.
    func preload(_ handed: [(pid: pid_t, exit: Exit?)]) {
        for (pid, exit) in handed {
            if let exit {
                state.withLock { $0.orphans[pid] = Orphan(pidfd: nil, exit: exit) }
            } else {
                takeOver([pid])
            }
        }
    }

    /// The shells not yet reported to a nursery, with their ends if reaped, for the binary
    /// that takes over (`Handover`).
    var all: [(pid: pid_t, exit: Exit?)] { state.withLock { $0.orphans.map { ($0.key, $0.value.exit) } } }

    /// `nursery` is the one running from now on: it is given every live orphan and told of
    /// every end it has not heard of. Before it is linked to a vault.
    func handOver(to nursery: RoleTransport) async {
        let pids = state.withLock { s in
            s.nursery = nursery
            return Array(s.orphans.keys)
        }
        for pid in pids {
            let pidfd = state.withLock { $0.orphans[pid]?.exit == nil ? $0.orphans[pid]?.pidfd : nil }
            if let pidfd {
                try? await nursery.open().tell(SupervisorToNursery.adoptShell(pid: pid), descriptors: [pidfd])
            }
            await report(pid, to: nursery)
        }
    }

    /// Tells `nursery` of the orphan's end, if it has ended, and forgets it.
    private func report(_ pid: pid_t, to nursery: RoleTransport) async {
        guard let (exit, pidfd) = state.withLock({ s -> (Exit, FileDescriptor?)? in
            guard let orphan = s.orphans[pid], let exit = orphan.exit, s.nursery === nursery else { return nil }
            s.orphans[pid] = nil
            return (exit, orphan.pidfd)
        }) else { return }
        try? pidfd?.close()
        do {
            try await nursery.open().tell(SupervisorToNursery.shellEnded(pid: pid, exit))
        } catch {
            // The nursery went meanwhile: the next one is told.
            state.withLock { s in s.orphans[pid] = Orphan(pidfd: nil, exit: exit) }
        }
    }

    /// Closes every pidfd (the service stops).
    func closeAll() {
        let all = state.withLock { s in
            defer { s.orphans = [:] }
            return s.orphans.values.compactMap(\.pidfd)
        }
        for pidfd in all { try? pidfd.close() }
    }
}
