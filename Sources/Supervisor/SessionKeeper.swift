import Circuits
import Logging
import RoleProtocol
import Synchronization
import SystemPackage

/// What outlives the vault: for every session, the descriptors of its PTY master and of its
/// kept ring (`VaultToSupervisor.keep`), held until the vault releases them and given to each
/// new vault to adopt. The supervisor never reads, maps or writes them, and never hands them
/// to anything but a vault it started, over that vault's own link: a worker cannot reach a
/// terminal through here.
///
/// A vault that dies while adopting a session twice in a row leaves that session aside: it
/// is logged and no longer given out (its shell then ends with its terminal), so that one
/// poisoned session cannot keep every other from being adopted.
final class SessionKeeper: Sendable {
    struct Kept: Sendable {
        var shell: Int32
        var master: FileDescriptor
        var ring: FileDescriptor
        /// Vaults that died while adopting it.
        var failedAdoptions = 0
    }

    private struct State {
        var kept: [String: Kept] = [:]
        /// The session being adopted, while a vault adopts it.
        var adopting: String?
        var adopted: UInt64 = 0
        var setAside: UInt64 = 0
    }

    /// Most sessions kept at once: each takes two of the supervisor's descriptors.
    let limit: Int
    private let state = Mutex(State())
    private let logger: Logger

    /// Also hands each kept session to systemd's fd store (`serve --fd-store`), so that a
    /// restart of the service keeps it.
    let fdStore: Bool

    /// Where the facts the vault vouches for go.
    let audit: AuditTrail?

    init(limit: Int, fdStore: Bool = false, audit: AuditTrail? = nil, logger: Logger) {
        self.audit = audit
        self.limit = limit
        self.fdStore = fdStore
        self.logger = logger
    }

    private func store(_ id: String, _ kept: Kept) {
        guard fdStore else { return }
        for (part, fd) in [("master", kept.master), ("ring", kept.ring)] {
            let name = Handover.sessionName(id, shell: kept.shell, part)
            if !SystemdNotify.send("FDSTORE=1\nFDNAME=\(name)", descriptors: [fd]) {
                logger.error("the service manager's fd store did not take a session; a restart of the service ends it",
                             metadata: ["session": "\(id)", "fd_name": "\(name)"])
            }
        }
    }

    private func unstore(_ id: String, _ kept: Kept) {
        guard fdStore else { return }
        for part in ["master", "ring"] {
            SystemdNotify.send("FDSTOREREMOVE=1\nFDNAME=\(Handover.sessionName(id, shell: kept.shell, part))")
        }
    }

    var count: Int { state.withLock { $0.kept.count } }
    /// The shells of the sessions kept.
    var shells: [Int32] { state.withLock { $0.kept.values.map(\.shell) } }
    /// Sessions adopted by a vault after the one that kept them, and sessions set aside.
    var adoptions: (adopted: UInt64, setAside: UInt64) { state.withLock { ($0.adopted, $0.setAside) } }

    /// Sessions a server before this one kept (`Handover`), for the first vault.
    func preload(_ sessions: [Handover.KeptSession]) {
        state.withLock { s in
            for session in sessions { s.kept[session.id] = Kept(shell: session.shell, master: session.master, ring: session.ring) }
        }
    }

    /// Every session kept, for the binary that takes over (`Handover`).
    var all: [Handover.KeptSession] {
        state.withLock { s in s.kept.map { Handover.KeptSession(id: $0.key, shell: $0.value.shell, master: $0.value.master, ring: $0.value.ring) } }
    }

    /// Serves the conversations `vault` opens (keep, release) until its transport closes.
    func serve(_ vault: RolePool.Instance) async {
        await withDiscardingTaskGroup { group in
            while let circuit = try? await vault.transport.accept() {
                group.addTask { await self.conversation(circuit, vault: vault) }
            }
        }
    }

    private func conversation(_ circuit: RoleCircuit, vault: RolePool.Instance) async {
        let received: Received<VaultToSupervisor>?
        do {
            received = try await circuit.receive(VaultToSupervisor.self)
        } catch {
            logger.error("refused a message from the vault", metadata: ["vault_pid": "\(vault.pid)", "error": "\(error)"])
            try? await circuit.send([], end: true)
            return
        }
        switch received?.message {
        case .keep(let session, let shell):
            // The decoder checked that both descriptors came with it.
            let master = received!.descriptors!.take(0)!, ring = received!.descriptors!.take(1)!
            let kept = Kept(shell: shell, master: master, ring: ring)
            let (taken, replaced) = state.withLock { s -> (Bool, Kept?) in
                guard s.kept[session] != nil || s.kept.count < limit else { return (false, nil) }
                defer { s.kept[session] = kept }
                return (true, s.kept[session])
            }
            for dropped in [replaced, taken ? nil : kept].compactMap({ $0 }) {
                try? dropped.master.close()
                try? dropped.ring.close()
            }
            if taken {
                store(session, kept)
            } else {
                logger.error("a session was not kept: as many are kept as the vault may have; it ends with this vault",
                             metadata: ["session": "\(session)", "limit": "\(limit)"])
            }
        case .release(let session):
            if let kept = state.withLock({ $0.kept.removeValue(forKey: session) }) {
                unstore(session, kept)
                try? kept.master.close()
                try? kept.ring.close()
            }
        case .audit(let record):
            audit?.record(record, vouchedBy: "vault")
        case .sessions, .done, .attachments, nil:
            break
        }
        try? await circuit.send([], end: true)
    }

    /// Gives `vault` every session kept, one at a time; the ones it could not adopt are
    /// closed. A vault that ends meanwhile counts against the session it was adopting.
    func handOver(to vault: RolePool.Instance, log: Logger) async throws {
        let ids = state.withLock { s in s.kept.keys.sorted() }
        for id in ids {
            guard let kept = state.withLock({ s -> Kept? in
                guard let kept = s.kept[id] else { return nil }
                s.adopting = id
                return kept
            }) else { continue }
            let answer: VaultToSupervisor?
            do {
                let circuit = try vault.transport.open()
                try await circuit.send(SupervisorToVault.adopt(session: id, shell: kept.shell), descriptors: [kept.master, kept.ring], end: true)
                answer = try await circuit.receive(VaultToSupervisor.self)?.message
            } catch {
                // The vault is gone: it may have died on this session.
                state.withLock { $0.adopting = nil }
                throw error
            }
            let adopted = state.withLock { s -> Bool in
                s.adopting = nil
                guard case .done(found: true)? = answer else {
                    s.kept[id] = nil
                    return false
                }
                s.kept[id]?.failedAdoptions = 0
                s.adopted += 1
                return true
            }
            if !adopted {
                log.error("the vault refused a kept session; its terminal is closed", metadata: ["session": "\(id)", "shell": "\(kept.shell)"])
                unstore(id, kept)
                try? kept.master.close()
                try? kept.ring.close()
            }
        }
    }

    /// The vault ended. If it was adopting a session, that session is charged with it; on the
    /// second charge in a row it is set aside.
    func vaultEnded(log: Logger) {
        let aside = state.withLock { s -> (String, Kept)? in
            guard let id = s.adopting else { return nil }
            s.adopting = nil
            s.kept[id]?.failedAdoptions += 1
            guard let kept = s.kept[id], kept.failedAdoptions >= 2 else { return nil }
            s.kept[id] = nil
            s.setAside += 1
            return (id, kept)
        }
        if let (id, kept) = aside {
            log.critical("a kept session was set aside: the vault died twice adopting it; its terminal is closed",
                         metadata: ["session": "\(id)", "shell": "\(kept.shell)"])
            unstore(id, kept)
            try? kept.master.close()
            try? kept.ring.close()
        }
    }

    /// Closes everything kept: the service stops, and the terminals hang up unless the fd
    /// store holds them for the next start.
    func closeAll() {
        let all = state.withLock { s in
            defer { s.kept = [:] }
            return Array(s.kept.values)
        }
        for kept in all {
            try? kept.master.close()
            try? kept.ring.close()
        }
    }
}
