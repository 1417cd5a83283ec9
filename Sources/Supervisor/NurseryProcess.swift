import Circuits
import Processes
import RoleProtocol
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The nursery, as the supervisor runs it: spawned with the first vault, linked to each vault
/// after it (`link`), so that its shells outlive a vault's restart; watched, and stopped with
/// the service. It lives in a process group of its own, takes the shells' identity itself,
/// and dies with the supervisor (parent-death signal).
final class NurseryProcess: NurseryLink {
    struct Configuration: Sendable {
        var executable: String
        var shells: NurseryShells
    }

    let child: ChildProcess
    /// The supervisor's link to it (`SupervisorToNursery`).
    let transport: RoleTransport
    private final class Flag: Sendable { let raised = Atomic<Bool>(false) }
    private let stopping = Flag()
    /// Raised once the process has been reaped, before `ended` is called.
    private let exited = Flag()
    private let watcher: Task<Void, Never>

    /// Spawns the nursery, linked to the supervisor. `ended` runs once if the nursery ends
    /// before `stop`.
    static func start(_ c: Configuration, ended: @escaping @Sendable (ChildProcess.Termination?) -> Void) async throws -> NurseryProcess {
        let (supervisorEnd, nurseryEnd) = try SocketCalls.socketPair(.seqpacket)
        let child: ChildProcess
        do {
            defer { try? nurseryEnd.close() }
            child = try ChildProcess.spawn(c.executable, arguments: ["role", Role.nursery.rawValue] + c.shells.arguments,
                                           descriptors: [nurseryEnd], environment: environment(),
                                           ownProcessGroup: true)
        } catch {
            try? supervisorEnd.close()
            throw error
        }
        do {
            let transport = try await Link.supervisorNursery.start(socket: supervisorEnd, side: .opener)
            return NurseryProcess(child: child, transport: transport, ended: ended)
        } catch {
            try? child.signal(SIGKILL)
            _ = await Reaper.shared.termination(of: child)
            throw error
        }
    }

    /// A new link between the nursery and a vault: the vault's end.
    func link() async throws -> FileDescriptor {
        let (vaultEnd, nurseryEnd) = try SocketCalls.socketPair(.seqpacket)
        defer { try? nurseryEnd.close() }
        do {
            try await transport.open().tell(SupervisorToNursery.vaultLink, descriptors: [nurseryEnd])
            return vaultEnd
        } catch {
            try? vaultEnd.close()
            throw error
        }
    }

    var isRunning: Bool {
        transport.failure == nil && !stopping.raised.load(ordering: .acquiring) && !exited.raised.load(ordering: .acquiring)
    }

    private init(child: ChildProcess, transport: RoleTransport, ended: @escaping @Sendable (ChildProcess.Termination?) -> Void) {
        self.child = child
        self.transport = transport
        let (stopping, exited) = (self.stopping, self.exited)
        watcher = Task {
            let termination = await Reaper.shared.termination(of: child)
            exited.raised.store(true, ordering: .releasing)
            transport.close()
            if !stopping.raised.load(ordering: .acquiring) { ended(termination) }
        }
    }

    /// Kills and reaps the nursery; its end is then not reported.
    func stop() async {
        stopping.raised.store(true, ordering: .releasing)
        transport.close()
        try? child.signal(SIGKILL)
        await watcher.value
    }

    /// The nursery gets nothing from the supervisor's environment but its LANG.
    static func environment() -> [String: String] {
        guard let lang = getenv("LANG") else { return [:] }
        return ["LANG": String(cString: lang)]
    }
}
