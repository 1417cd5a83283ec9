import Dispatch
import RoleProtocol
import Synchronization

/// The vault's sessions as the control socket reaches them: asked through the `LinkBroker`
/// (which knows the running vault), from the control socket's own thread.
struct SessionControl: Sendable {
    let broker: LinkBroker
    /// The command every session runs, for the listing.
    let command: String
    /// The running binary (`Server.Configuration.build`), and the one an upgrade replaced.
    let build: String
    let upgradedFrom: String?

    func list() throws -> [SessionSummary] { try blocking { try await broker.sessions() } }

    /// What outlives the vault: its generation (vaults started), the sessions kept for the
    /// next one, those a new vault adopted, and those set aside as poisoned.
    var keeping: ControlServer.Keeping {
        let (adopted, setAside) = broker.keeper.adoptions
        return .init(vaultGeneration: broker.vaultGeneration, sessionsKept: broker.keeper.count, sessionsAdopted: adopted,
                     sessionsSetAside: setAside)
    }

    func kick(_ session: String, client: UInt32?) throws -> Bool {
        try blocking { try await broker.sessionRequest(.kick(session: session, client: client)) }
    }

    /// Per worker id: signatures the keyholder made and refused for it (nothing without TLS).
    func signatures() -> [Int: (signed: UInt64, refused: UInt64)] {
        let counts = (try? blocking { try await broker.signatureCounts() }) ?? []
        return Dictionary(counts.map { (Int($0.worker), (signed: $0.signed, refused: $0.refused)) }, uniquingKeysWith: { a, _ in a })
    }

    func hangUp(_ session: String) throws -> Bool {
        try blocking { try await broker.sessionRequest(.hangUp(session: session)) }
    }

    struct TimedOut: Error, CustomStringConvertible {
        var description: String { "the vault did not answer within 5 s" }
    }

    /// Runs `body` and waits for it on this (dedicated, blocking) thread, at most 5 s.
    private func blocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
        try Self.blocking(timeout: 5, body)
    }

    /// Runs `body` from a thread that is not Swift concurrency's, waiting at most `timeout` seconds.
    static func blocking<T: Sendable>(timeout: Int, _ body: @escaping @Sendable () async throws -> T) throws -> T {
        let done = DispatchSemaphore(value: 0)
        let result = Mutex<Result<T, Error>?>(nil)
        let task = Task {
            let outcome = await Result(catching: body)
            result.withLock { $0 = outcome }
            done.signal()
        }
        guard done.wait(timeout: .now() + .seconds(timeout)) == .success else {
            task.cancel()
            throw TimedOut()
        }
        return try result.withLock { $0! }.get()
    }
}

extension Result where Failure == Error {
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}
