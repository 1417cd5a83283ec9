import RoleProtocol
import XCTest

/// Every link's codec: each message survives a round trip, and each decoder refuses what does
/// not belong on its link and direction — without trapping, whatever the bytes.
final class LinkMessageTests: XCTestCase {
    static let supervisorToWorker: [SupervisorToWorker] = [.client(tls: false, newSessions: true), .vaultLink(worker: 0), .vaultLink(worker: .max), .client(tls: true, newSessions: false, trustedProxy: true),
                                                            .keyholderLink(worker: 3, keyKind: TLSKeyKind.p256.rawValue)]
    static let workerToKeyholder: [WorkerToKeyholder] = [.sign(scheme: 0x0804, data: [1]), .sign(scheme: 0x0403, data: Array(repeating: 7, count: LinkLimits.signedData))]
    static let keyholderToWorker: [KeyholderToWorker] = [.signature([]), .signature(Array(repeating: 9, count: LinkLimits.signature)), .refused("over the rate")]
    static let supervisorToKeyholder: [SupervisorToKeyholder] = [.workerLink(worker: 0), .workerLink(worker: .max), .counts]
    static let keyholderToSupervisor: [KeyholderToSupervisor] = [.counts([]), .counts([.init(worker: 1, signed: 2, refused: 3), .init(worker: .max, signed: .max, refused: 0)])]
    static let supervisorToVault: [SupervisorToVault] = [
        .configure(credential: nil), .configure(credential: []), .configure(credential: Array("dTpw".utf8)),
        .nurseryLink, .workerLink(worker: 7), .listSessions, .kick(session: "abc", client: nil), .kick(session: "abc", client: 3),
        .hangUp(session: "abc"), .attachmentCount,
        .configureUsers(WebUsers(hashes: ["alice": "$6$abc$MtSdWSZbhct2oe.SOqOUM2M/GA/uj5.vyVtJgRHgKi9uqXuWuJqOYE7H/YlsYGVg",
                                          "bob": "$y$j9T$Fq2nVuFvFvFvFvFvFvFvF.$abcdefghijklmnopqrstuvw"])),
    ]
    static let vaultToSupervisor: [VaultToSupervisor] = [
        .sessions([]), .done(found: true), .done(found: false), .attachments(current: 0, started: 0),
        .attachments(current: .max, started: .max),
        .audit(AuditRecord(.credentialRefused, [("method", "basic"), ("user", "é\"\n"), ("worker", "7")])),
        .audit(AuditRecord(.sessionEnded, [])),
        .sessions([SessionSummary(id: "abc", shell: 42, ageSeconds: 9, bytesOut: 1 << 33, ringHeld: 100, ringCapacity: 1 << 20,
                                  slowConsumerEvents: 1, ignored: 2,
                                  clients: [.init(client: 0, worker: 1, writer: true, lag: 0), .init(client: 5, worker: 0, writer: false, lag: 77)])]),
    ]
    static let workerToVault: [WorkerToVault] = [
        .check(token: []), .check(token: Array("dTpw".utf8)),
        .attach(AttachRequest(columns: 80, rows: 24, token: Array("dTpw".utf8))),
        .attach(AttachRequest(columns: .max, rows: 1, token: [])),
        .attach(AttachRequest(columns: 80, rows: 24, token: Array("dTpw".utf8), session: (Array("sid".utf8), Array("secret".utf8)),
                              offset: 123_456_789_012, readonly: true)),
        .attach(AttachRequest(columns: 1, rows: 1, token: [], offset: 0)),
        .attach(AttachRequest(columns: 80, rows: 24, token: Array("dTpw".utf8), forwardedFor: Array("2001:db8::7".utf8))),
        .attach(AttachRequest(columns: 80, rows: 24, token: [1], arguments: [Array("one".utf8), [], Array(repeating: 0x41, count: 255)])), .input([]), .input(Array(0...255)), .resize(columns: 120, rows: 40),
        .pause, .resume,
    ]
    static let vaultToWorker: [VaultToWorker] = [
        .accepted(title: "cloister"), .accepted(title: "ünïcødé ✓"), .output([]), .output(Array(0...255)),
        .attached(SessionInfo(title: "t", session: "sid", secret: "w", readSecret: "r", offset: 7, skipped: 3)),
        .attached(SessionInfo(title: "", session: "sid", secret: nil, readSecret: "r", offset: .max, skipped: 0)),
        .resynced(offset: 1 << 40, skipped: 99),
        .exited(.status(0)), .exited(.status(-1)), .exited(.signal(9)),
    ] + VaultToWorker.Refusal.allCases.map { .refused($0) }
    static let vaultToNursery: [VaultToNursery] = [
        .spawn(columns: 80, rows: 24), .spawn(columns: 0, rows: .max),
        .spawn(columns: 80, rows: 24, arguments: Array(repeating: Array("a b".utf8), count: LinkLimits.urlArguments)),
        .spawn(columns: 80, rows: 24, user: Array("alice".utf8)), .spawn(columns: 1, rows: 2, arguments: [[0x61]], user: [0x62]),
        .signal(pid: 4242, signal: 15), .signal(pid: 2, signal: 1), .signal(pid: .max, signal: 64),
    ]
    static let nurseryToVault: [NurseryToVault] = [
        .spawned(pid: 4242), .failed(reason: "posix_spawn: ENOENT"), .exited(pid: 4242, .status(7)), .exited(pid: 1, .signal(1)),
    ]

    private func assertRoundTrips<M: LinkMessage>(_ messages: [M], file: StaticString = #filePath, line: UInt = #line) {
        for message in messages {
            XCTAssertEqual(try M(decoding: message.encoded, descriptors: message.descriptorCount), message, file: file, line: line)
        }
    }

    func testEveryMessageRoundTrips() {
        assertRoundTrips(Self.workerToKeyholder)
        assertRoundTrips(Self.keyholderToWorker)
        assertRoundTrips(Self.supervisorToKeyholder)
        assertRoundTrips(Self.keyholderToSupervisor)
        assertRoundTrips(Self.supervisorToWorker)
        assertRoundTrips(Self.supervisorToVault)
        assertRoundTrips(Self.vaultToSupervisor)
        assertRoundTrips(Self.workerToVault)
        assertRoundTrips(Self.vaultToWorker)
        assertRoundTrips(Self.vaultToNursery)
        assertRoundTrips(Self.nurseryToVault)
        assertRoundTrips([WorkerToSupervisor.authenticated])
        assertRefused(WorkerToSupervisor.self, [0x61, 0], .malformed(kind: "authenticated", length: 2))
        assertRefused(WorkerToSupervisor.self, [0x61], descriptors: 1, .descriptorCount(kind: "authenticated", expected: 0, received: 1))
        // An output message is ttyd's output message, byte for byte: the worker passes it on.
        XCTAssertEqual(VaultToWorker.output(Array("hi".utf8)).encoded, Array("0hi".utf8))
        XCTAssertEqual(VaultToWorker.outputKind, UInt8(ascii: "0"))
        XCTAssertEqual(WorkerToVault.input(Array("hi".utf8)).encoded.first, WorkerToVault.inputKind)
    }

    /// The recorder's links: the vault's feed and the supervisor's files. A session id names a
    /// file, so only what a vault's ids are made of decodes: no path, no dot at the start.
    func testTheRecorderLinksRoundTripAndRefuseWhatCouldNameAnotherFile() {
        let session = RecorderFeed.Session(id: "h1.AbCdEf-_9", time: 1_796_650_000_123_456)
        assertRoundTrips([RecorderFeed.hello(intent: Link.vaultRecorder.intent, build: "b"),
                          .started(session, user: "tester", columns: 120, rows: 40, offset: 0, resumed: false),
                          .started(session, user: "", columns: 80, rows: 24, offset: .max, resumed: true),
                          .output(session, offset: 7, bytes: Array("h\u{e9}".utf8)), .output(session, offset: 0, bytes: Array(repeating: 0, count: RecorderFeed.maxOutput)),
                          .input(session, bytes: [3]), .resize(session, columns: 1, rows: 1), .gap(session, events: 2, bytes: 99),
                          .ended(session, exit: "exit status 0")])
        assertRoundTrips([SupervisorToRecorder.directory(last: 0, link: ""), .directory(last: 41, link: String(repeating: "ab", count: 32)),
                          .feed, .file(existing: true), .file(existing: false), .refused("openat: File exists"),
                          .finish(reason: "the server stopped")])
        assertRoundTrips([RecorderToSupervisor.open(session: "abc"), .finished(session: "h2.x"),
                          .audit(AuditRecord(.recordingCheckpoint, [("session", "abc"), ("head", "00")]))])
        for id in ["../etc", ".hidden", "a/b", "a..b", "", String(repeating: "a", count: 65), "a b", "\u{e9}"] {
            XCTAssertFalse(RecorderFeed.isSessionID(id), id)
            var w = [UInt8(0x4f), UInt8(id.utf8.count)] + Array(id.utf8)
            XCTAssertThrowsError(try RecorderToSupervisor(decoding: w, descriptors: 0), id)
            w = [UInt8(0x6f), UInt8(id.utf8.count)] + Array(id.utf8) + Array(repeating: 0, count: 16)
            XCTAssertThrowsError(try RecorderFeed(decoding: w, descriptors: 0), id)
        }
        XCTAssertThrowsError(try SupervisorToRecorder(decoding: [0x44, 0, 0, 0, 1, 3] + Array("xyz".utf8), descriptors: 0), "a link that is not SHA-256 hex")
        XCTAssertThrowsError(try RecorderFeed(decoding: [0x6f, 1, 0x61] + Array(repeating: 0, count: 16) + Array(repeating: 1, count: RecorderFeed.maxOutput + 1), descriptors: 0))
    }

    private func assertRefused<M: LinkMessage>(_ type: M.Type, _ payload: [UInt8], descriptors: Int = 0,
                                               _ expected: LinkMessageError, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try M(decoding: payload, descriptors: descriptors), "\(payload.prefix(8))", file: file, line: line) {
            XCTAssertEqual($0 as? LinkMessageError, expected, file: file, line: line)
        }
    }

    func testEmptyAndUnknownKinds() {
        assertRefused(SupervisorToWorker.self, [], .empty(type: "SupervisorToWorker"))
        // A signing request the keyholder would have to buffer beyond what TLS asks, or none at all.
        assertRefused(WorkerToKeyholder.self, [0x53, 0x08, 0x04] + Array(repeating: 0, count: LinkLimits.signedData + 1),
                      .oversized(kind: "sign", length: LinkLimits.signedData + 1, limit: LinkLimits.signedData))
        assertRefused(WorkerToKeyholder.self, [0x53, 0x08, 0x04], .malformed(kind: "sign", length: 3))
        assertRefused(SupervisorToWorker.self, SupervisorToWorker.keyholderLink(worker: 1, keyKind: 1).encoded, descriptors: 1,
                      .descriptorCount(kind: "keyholderLink", expected: 2, received: 1))
        assertRefused(WorkerToVault.self, [], .empty(type: "WorkerToVault"))
        assertRefused(VaultToWorker.self, [0xff], .unknownKind(0xff, type: "VaultToWorker"))
        assertRefused(VaultToNursery.self, [0x00, 1, 2, 3, 4], .unknownKind(0, type: "VaultToNursery"))
    }

    /// A message of one link or direction is not a message of another, so a role never
    /// acts on what its peer has no business sending it.
    func testMessagesOfOtherLinksAreUnknownKinds() {
        for message in Self.supervisorToVault {
            XCTAssertThrowsError(try WorkerToVault(decoding: message.encoded, descriptors: message.descriptorCount), "\(message)")
        }
        for message in Self.vaultToWorker {
            XCTAssertThrowsError(try WorkerToVault(decoding: message.encoded, descriptors: 0), "\(message)")
        }
        for message in Self.workerToVault {
            XCTAssertThrowsError(try SupervisorToVault(decoding: message.encoded, descriptors: 0), "\(message)")
            XCTAssertThrowsError(try VaultToWorker(decoding: message.encoded, descriptors: 0), "\(message)")
        }
        for message in Self.supervisorToWorker {
            XCTAssertThrowsError(try SupervisorToVault(decoding: message.encoded, descriptors: 1), "\(message)")
        }
    }

    func testShortAndLongBodies() {
        assertRefused(SupervisorToWorker.self, [0x4c, 0, 0, 1], descriptors: 1, .malformed(kind: "vaultLink", length: 4))
        assertRefused(SupervisorToWorker.self, [0x63], descriptors: 1, .malformed(kind: "client", length: 1))
        assertRefused(SupervisorToWorker.self, [0x63, 4], descriptors: 1, .malformed(kind: "client", length: 2))  // not a flag
        assertRefused(SupervisorToWorker.self, [0x74, 1, 0], descriptors: 1, .malformed(kind: "tlsClient", length: 3))
        assertRefused(WorkerToVault.self, [0x41, 0, 80, 0], .malformed(kind: "attach", length: 4))
        assertRefused(WorkerToVault.self, [0x41, 0, 80, 0, 24, 8], .malformed(kind: "attach", length: 6))  // arguments missing
        assertRefused(WorkerToVault.self, [0x41, 0, 80, 0, 24, 64], .malformed(kind: "attach", length: 6))  // unknown flag
        assertRefused(WorkerToVault.self, [0x41, 0, 80, 0, 24, 32, 46] + [UInt8](repeating: 0x31, count: 46),
                      .oversized(kind: "attach", length: 46, limit: LinkLimits.forwardedAddress))
        assertRefused(WorkerToVault.self, [0x41, 0, 80, 0, 24, 2, 3, 0x41], .malformed(kind: "attach", length: 8))  // id cut short
        assertRefused(WorkerToVault.self, [0x41, 0, 80, 0, 24, 2, 65] + [UInt8](repeating: 0x41, count: 65) + [0],
                      .oversized(kind: "attach", length: 65, limit: LinkLimits.sessionField))
        assertRefused(WorkerToVault.self, [0x72, 0, 80, 0, 24, 9], .malformed(kind: "resize", length: 6))
        assertRefused(WorkerToVault.self, [0x70, 1], .malformed(kind: "pause", length: 2))
        assertRefused(VaultToWorker.self, [0x78, 0, 0, 0, 7], .malformed(kind: "exited", length: 5))
        assertRefused(VaultToWorker.self, [0x78, 2, 0, 0, 0, 7], .malformed(kind: "exited", length: 6))
        assertRefused(VaultToWorker.self, [0x44], .malformed(kind: "refused", length: 1))
        assertRefused(VaultToWorker.self, [0x44, 0], .malformed(kind: "refused", length: 2))
        assertRefused(VaultToWorker.self, [0x59, 0xff, 0xfe], .malformed(kind: "accepted", length: 3))
        assertRefused(SupervisorToVault.self, [0x4b], .malformed(kind: "configure", length: 1))
        assertRefused(SupervisorToVault.self, [0x4b, 2], .malformed(kind: "configure", length: 2))
        assertRefused(SupervisorToVault.self, [0x4b, 0, 1], .malformed(kind: "configure", length: 3))
        assertRefused(NurseryToVault.self, [0x50, 0, 0], descriptors: 1, .malformed(kind: "spawned", length: 3))
        // A signal for init, for every process (pid -1 is 0xffffffff), or out of range.
        assertRefused(VaultToNursery.self, [0x6b, 0, 0, 0, 1, 15], .malformed(kind: "signal", length: 6))
        assertRefused(VaultToNursery.self, [0x6b, 0xff, 0xff, 0xff, 0xff, 15], .malformed(kind: "signal", length: 6))
        assertRefused(VaultToNursery.self, [0x6b, 0, 0, 0x10, 0, 65], .malformed(kind: "signal", length: 6))
        assertRefused(VaultToNursery.self, [0x6b, 0, 0, 0x10, 0, 0], .malformed(kind: "signal", length: 6))
    }

    /// An audit record's names are fixed words, its counts and lengths bounded; what a sender
    /// writes is cut to fit.
    func testAuditRecordsAreBounded() {
        let audit: UInt8 = 0x75
        assertRefused(VaultToSupervisor.self, [audit, 0xee, 0], .malformed(kind: "audit", length: 3))
        assertRefused(VaultToSupervisor.self, [audit, 1, UInt8(AuditRecord.maxFields + 1)], .malformed(kind: "audit", length: 3))
        // A name that is not lower-case letters and underscores.
        let badName: [UInt8] = [audit, 1, 1, 3] + Array("a-b".utf8) + [1, 0x78]
        assertRefused(VaultToSupervisor.self, badName, .malformed(kind: "audit", length: badName.count))
        let long = AuditRecord(.attached, (0..<40).map { ("field", String(repeating: "✓", count: 200) + "\($0)") })
        XCTAssertEqual(long.fields.count, AuditRecord.maxFields)
        XCTAssertTrue(long.fields.allSatisfy { $0.value.utf8.count <= AuditRecord.maxValue })
        XCTAssertEqual(try VaultToSupervisor(decoding: VaultToSupervisor.audit(long).encoded, descriptors: 0), .audit(long))
        XCTAssertEqual(Set(AuditRecord.Kind.allCases.map(\.description)).count, AuditRecord.Kind.allCases.count, "one name per kind")
    }

    func testOversizedFields() {
        let token = [UInt8](repeating: 0x41, count: LinkLimits.token + 1)
        assertRefused(WorkerToVault.self, WorkerToVault.check(token: token).encoded,
                      .oversized(kind: "check", length: token.count, limit: LinkLimits.token))
        assertRefused(WorkerToVault.self, WorkerToVault.attach(AttachRequest(columns: 1, rows: 1, token: token)).encoded,
                      .oversized(kind: "attach", length: token.count, limit: LinkLimits.token))
        assertRefused(SupervisorToVault.self, [0x4b, 1] + token, .oversized(kind: "configure", length: token.count, limit: LinkLimits.token))
        let text = [UInt8](repeating: 0x61, count: LinkLimits.text + 1)
        assertRefused(VaultToWorker.self, [0x59] + text, .oversized(kind: "accepted", length: text.count, limit: LinkLimits.text))
        assertRefused(NurseryToVault.self, [0x46] + text, .oversized(kind: "failed", length: text.count, limit: LinkLimits.text))
        // What a sender writes is cut to fit, at a character boundary, so it always decodes.
        let long = String(repeating: "é", count: LinkLimits.text)
        let clipped = try? VaultToWorker(decoding: VaultToWorker.accepted(title: long).encoded, descriptors: 0)
        XCTAssertEqual(clipped, .accepted(title: String(repeating: "é", count: LinkLimits.text / 2)))
    }

    func testWrongDescriptorCounts() {
        assertRefused(SupervisorToWorker.self, SupervisorToWorker.client(tls: false, newSessions: true).encoded, descriptors: 0,
                      .descriptorCount(kind: "client", expected: 1, received: 0))
        assertRefused(SupervisorToWorker.self, SupervisorToWorker.vaultLink(worker: 1).encoded, descriptors: 2,
                      .descriptorCount(kind: "vaultLink", expected: 1, received: 2))
        // Users whose hashes are plain text are refused by the vault's decoder too.
        assertRefused(SupervisorToVault.self, [0x55, 0x00, 0x0b] + Array("alice:hello".utf8), descriptors: 0,
                      .malformed(kind: "configureUsers", length: 14))
        assertRefused(SupervisorToVault.self, SupervisorToVault.configure(credential: nil).encoded, descriptors: 1,
                      .descriptorCount(kind: "configure", expected: 0, received: 1))
        assertRefused(SupervisorToVault.self, SupervisorToVault.nurseryLink.encoded, descriptors: 0,
                      .descriptorCount(kind: "nurseryLink", expected: 1, received: 0))
        assertRefused(WorkerToVault.self, WorkerToVault.input([1]).encoded, descriptors: 1,
                      .descriptorCount(kind: "input", expected: 0, received: 1))
        assertRefused(VaultToWorker.self, VaultToWorker.output([1]).encoded, descriptors: 3,
                      .descriptorCount(kind: "output", expected: 0, received: 3))
        assertRefused(NurseryToVault.self, NurseryToVault.spawned(pid: 1).encoded, descriptors: 0,
                      .descriptorCount(kind: "spawned", expected: 1, received: 0))
        assertRefused(NurseryToVault.self, NurseryToVault.exited(pid: 7, .status(0)).encoded, descriptors: 1,
                      .descriptorCount(kind: "exited", expected: 0, received: 1))
    }

    /// Every prefix and every one-byte change of every message either decodes or is refused
    /// with an error: no input traps a decoder.
    func testNoInputTraps() {
        func mangle<M: LinkMessage>(_ messages: [M]) {
            for message in messages {
                let bytes = message.encoded
                for cut in 0...bytes.count {
                    for descriptors in 0...2 { _ = try? M(decoding: Array(bytes.prefix(cut)), descriptors: descriptors) }
                }
                for i in bytes.indices {
                    for value: UInt8 in [0, 1, 0x7f, 0x80, 0xff] {
                        var changed = bytes
                        changed[i] = value
                        _ = try? M(decoding: changed, descriptors: message.descriptorCount)
                    }
                }
            }
        }
        mangle(Self.supervisorToWorker)
        mangle(Self.supervisorToVault)
        mangle(Self.vaultToSupervisor)
        mangle(Self.workerToVault)
        mangle(Self.vaultToWorker)
        mangle(Self.vaultToNursery)
        mangle(Self.nurseryToVault)
    }

    /// ttyd's --url-arg arguments: bounded in count and length, no NUL, on both links.
    func testCommandArgumentsAreBounded() {
        let nul = AttachRequest(columns: 80, rows: 24, token: [], arguments: [[0x61, 0, 0x62]])
        XCTAssertThrowsError(try WorkerToVault(decoding: WorkerToVault.attach(nul).encoded, descriptors: 0))
        let many = AttachRequest(columns: 80, rows: 24, token: [], arguments: Array(repeating: [0x61], count: LinkLimits.urlArguments + 1))
        XCTAssertThrowsError(try WorkerToVault(decoding: WorkerToVault.attach(many).encoded, descriptors: 0))
        XCTAssertThrowsError(try VaultToNursery(decoding: VaultToNursery.spawn(columns: 1, rows: 1, arguments: [[0]]).encoded, descriptors: 0))
        XCTAssertThrowsError(try VaultToNursery(decoding: [0x53, 0, 1, 0, 1, 1, 0], descriptors: 0), "a count of 0")
        XCTAssertThrowsError(try VaultToNursery(decoding: [0x53, 0, 1, 0, 1, 1, 1, 5, 0x61], descriptors: 0), "a field past the end")
        XCTAssertThrowsError(try VaultToNursery(decoding: [0x53, 0, 1, 0, 1, 4], descriptors: 0), "an unknown flag")
        XCTAssertThrowsError(try VaultToNursery(decoding: [0x53, 0, 1, 0, 1, 2, 0], descriptors: 0), "an empty user")
        XCTAssertThrowsError(try VaultToNursery(decoding: [0x53, 0, 1, 0, 1, 2, 2, 0x61, 0], descriptors: 0), "a user with a NUL")
    }

    /// Found by FuzzLinkMessages: a session id that is not UTF-8 was decoded with replacement
    /// characters, a different id than the one sent (and one that may no longer fit the field).
    func testSessionIdsMustBeUTF8() {
        let hangUp: [UInt8] = [0x68, 2, 0xff, 0xfe]
        XCTAssertThrowsError(try SupervisorToVault(decoding: hangUp, descriptors: 0))
        XCTAssertThrowsError(try SupervisorToVault(decoding: [0x6b, 1, 0xc3], descriptors: 0))
        XCTAssertEqual(try SupervisorToVault(decoding: [0x68, 2, 0xc3, 0xa9], descriptors: 0), .hangUp(session: "é"))
    }
}
