import Circuits
import Foundation
import Processes
import RoleProtocol
import Sandbox
import Supervisor
import Synchronization
import SystemPackage
import TestSupport
import Vault
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The real, sandboxed vault with this test as the worker, playing one an attacker controls:
/// it sends whatever it likes on its link, and still gets no shell without the credential.
final class VaultTests: XCTestCase {
    static let secret = "admin:correct-horse"

    final class Started: Sendable {
        let launched: RoleLauncher.Launched
        let link: Transport<UInt16>
        let violations: Violations
        init(launched: RoleLauncher.Launched, link: Transport<UInt16>, violations: Violations) {
            (self.launched, self.link, self.violations) = (launched, link, violations)
        }
    }

    final class Violations: Sendable {
        let names = Mutex<[String]>([])
    }

    private func startVault() async throws -> Started {
        let violations = Violations()
        let launched = try await RoleLauncher.start(
            executable: cloisterExecutable, role: "vault", policy: packageRoot + "/policies/vault.json", mode: .report,
            user: "nobody", group: "nogroup", intent: RoleIntent.supervisorVault, build: cloisterBuildID
        ) { event in violations.names.withLock { $0.append(event.syscall) } }
        // As the supervisor: the credential, then a link whose other end is ours.
        try await Self.tell(launched.transport, .configure(credential: Credential(userAndPassword: Self.secret).token))
        let (vaultEnd, workerEnd) = try SocketCalls.socketPair(.seqpacket)
        try await Self.tell(launched.transport, .workerLink(worker: 0), descriptor: vaultEnd)
        try vaultEnd.close()
        let link = try await Transport<UInt16>.start(
            socket: workerEnd, kind: .seqpacket,
            configuration: RoleLink.configuration(RoleIntent.workerVault, side: .opener, build: cloisterBuildID))
        return Started(launched: launched, link: link, violations: violations)
    }

    private static func tell(_ transport: Transport<UInt16>, _ message: RoleMessage, descriptor: FileDescriptor? = nil) async throws {
        let circuit = try transport.open()
        try await circuit.send(message.encoded, descriptors: descriptor.map { [$0] } ?? [], end: true)
        while !(try await circuit.receive()).isEnd {}
    }

    /// One conversation as a worker would start it; the vault's first answer.
    private static func ask(_ link: Transport<UInt16>, _ payload: [UInt8]) async throws -> RoleMessage? {
        let circuit = try link.open()
        try await circuit.send(payload)
        let reply = try await circuit.receive()
        try? await circuit.send([], end: true)
        return RoleMessage(decoding: reply.payload)
    }

    private func stop(_ started: Started) async throws {
        started.link.close()
        started.launched.transport.close()
        _ = try await onOwnThread { try started.launched.child.wait() }
        started.launched.monitor.waitUntilDone()
        await started.launched.output.value
    }

    func testAWorkerWithoutTheCredentialGetsNoShell() async throws {
        let vault = try await startVault()
        let wrong = Array(Credential(userAndPassword: "admin:guess").token)
        let refused = RoleMessage.denied(reason: "bad credential")
        let attachWrong = try await Self.ask(vault.link, RoleMessage.attach(columns: 80, rows: 24, token: wrong).encoded)
        XCTAssertEqual(attachWrong, refused)
        let attachEmpty = try await Self.ask(vault.link, RoleMessage.attach(columns: 80, rows: 24, token: []).encoded)
        XCTAssertEqual(attachEmpty, refused)
        let checkWrong = try await Self.ask(vault.link, RoleMessage.check(token: wrong).encoded)
        XCTAssertEqual(checkWrong, refused)
        // Skipping the attach, or sending what no worker would, gets nothing either.
        let inputFirst = try await Self.ask(vault.link, RoleMessage.input(Array("id\r".utf8)).encoded)
        XCTAssertEqual(inputFirst, .denied(reason: "malformed request"))
        let garbage = try await Self.ask(vault.link, [0xff, 0x00, 0x01])
        XCTAssertEqual(garbage, .denied(reason: "malformed request"))
        // The right credential passes the check: what stops it here is only that this vault
        // has no nursery, so the refusals above were the credential's doing.
        let right = Credential(userAndPassword: Self.secret).token
        let attachRight = try await Self.ask(vault.link, RoleMessage.attach(columns: 80, rows: 24, token: right).encoded)
        guard case .denied(let reason) = attachRight else { return XCTFail("\(String(describing: attachRight))") }
        XCTAssertTrue(reason.contains("no nursery"), reason)
        let checkRight = try await Self.ask(vault.link, RoleMessage.check(token: right).encoded)
        XCTAssertEqual(checkRight, .accepted(title: "cloister"))
        XCTAssertEqual(vault.violations.names.withLock { $0 }, [])
        try await stop(vault)
    }

    /// Guesses sent in parallel on the link still get at most ten answers a second.
    func testGuessesFromAWorkerAreThrottled() async throws {
        let vault = try await startVault()
        let guesses = 12
        let start = ContinuousClock.now
        let answers = try await withThrowingTaskGroup(of: RoleMessage?.self) { group in
            for i in 0..<guesses {
                group.addTask {
                    try await Self.ask(vault.link, RoleMessage.check(token: Credential(userAndPassword: "admin:\(i)").token).encoded)
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        let elapsed = ContinuousClock.now - start
        XCTAssertEqual(answers, Array(repeating: .denied(reason: "bad credential"), count: guesses))
        XCTAssertGreaterThanOrEqual(elapsed, .milliseconds(100 * (guesses - 1) * 9 / 10), "\(guesses) guesses answered in \(elapsed)")
        try await stop(vault)
    }

    func testCredentialComparison() {
        let credential = Credential(userAndPassword: Self.secret)
        XCTAssertEqual(String(decoding: credential.token, as: UTF8.self), Data(Self.secret.utf8).base64EncodedString())
        XCTAssertTrue(credential.matches(credential.token))
        XCTAssertFalse(credential.matches([]))
        XCTAssertFalse(credential.matches(Array(credential.token.dropLast())))
        XCTAssertFalse(credential.matches(credential.token + [0x41]))
        var flipped = credential.token
        flipped[0] ^= 1
        XCTAssertFalse(credential.matches(flipped))
        XCTAssertFalse(Credential(token: []).matches([]), "an empty credential lets nobody in")
        // The lengths are compared whole: a token that is the credential repeated, longer by
        // a multiple of 256 bytes, agrees with it in every byte the comparison cycles over.
        for extra in [256, 512, 65536] {
            let repeated = (0..<(credential.token.count + extra)).map { credential.token[$0 % credential.token.count] }
            XCTAssertFalse(credential.matches(repeated), "\(extra) bytes longer")
        }
    }
}
