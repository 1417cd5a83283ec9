import Circuits
import Processes
import RoleProtocol
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The nursery, as the supervisor runs it: one per vault, spawned when the vault starts,
/// linked to it, watched, and stopped when the vault ends. It lives in a process group of its
/// own, takes the shells' identity itself, and dies with the supervisor (parent-death signal).
final class NurseryProcess: NurseryLink {
    struct Configuration: Sendable {
        var executable: String
        var shells: NurseryShells
    }

    let child: ChildProcess
    private final class Flag: Sendable { let raised = Atomic<Bool>(false) }
    private let stopping = Flag()
    private let watcher: Task<Void, Never>

    /// Spawns the nursery and returns it with the vault's end of their link. `ended` runs
    /// once if the nursery ends before `stop`.
    static func start(_ c: Configuration,
                      ended: @escaping @Sendable (ChildProcess.Termination?) -> Void) throws -> (NurseryProcess, vaultEnd: FileDescriptor) {
        let (vaultEnd, nurseryEnd) = try SocketCalls.socketPair(.seqpacket)
        defer { try? nurseryEnd.close() }
        do {
            let child = try ChildProcess.spawn(c.executable, arguments: ["role", Role.nursery.rawValue] + c.shells.arguments,
                                               descriptors: [nurseryEnd], environment: environment(),
                                               ownProcessGroup: true)
            return (NurseryProcess(child: child, ended: ended), vaultEnd)
        } catch {
            try? vaultEnd.close()
            throw error
        }
    }

    private init(child: ChildProcess, ended: @escaping @Sendable (ChildProcess.Termination?) -> Void) {
        self.child = child
        let stopping = self.stopping
        watcher = Task {
            let termination = try? await onOwnThread { try child.wait() }
            if !stopping.raised.load(ordering: .acquiring) { ended(termination) }
        }
    }

    /// Kills and reaps the nursery; its end is then not reported.
    func stop() async {
        stopping.raised.store(true, ordering: .releasing)
        try? child.signal(SIGKILL)
        await watcher.value
    }

    /// The nursery gets nothing from the supervisor's environment but its LANG.
    static func environment() -> [String: String] {
        guard let lang = getenv("LANG") else { return [:] }
        return ["LANG": String(cString: lang)]
    }
}
