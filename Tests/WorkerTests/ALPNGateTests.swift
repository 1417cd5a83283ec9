import XCTest
@testable import Worker

/// The ClientHello reader in front of TLS: what it refuses, what it lets through to the TLS
/// library, and that no input makes it read out of bounds.
final class ALPNGateTests: XCTestCase {
    /// A TLS record holding a ClientHello with `protocols` in its ALPN extension (none: no
    /// extension at all).
    static func clientHello(alpn protocols: [String]?) -> [UInt8] {
        var extensions: [UInt8] = []
        if let protocols {
            let list = protocols.flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) }
            let body = [UInt8(list.count >> 8), UInt8(list.count & 0xff)] + list
            extensions += [0x00, 0x10, UInt8(body.count >> 8), UInt8(body.count & 0xff)] + body
        }
        // server_name first, so that ALPN is not the first extension read.
        extensions = [0x00, 0x00, 0x00, 0x00] + extensions
        var hello: [UInt8] = [0x03, 0x03] + Array(repeating: 0xab, count: 32)
        hello += [0]  // session id
        hello += [0x00, 0x02, 0x13, 0x01]  // one cipher suite
        hello += [0x01, 0x00]  // null compression
        hello += [UInt8(extensions.count >> 8), UInt8(extensions.count & 0xff)] + extensions
        let handshake = [0x01, 0x00, UInt8(hello.count >> 8), UInt8(hello.count & 0xff)] + hello
        return [0x16, 0x03, 0x01, UInt8(handshake.count >> 8), UInt8(handshake.count & 0xff)] + handshake
    }

    func testVerdicts() {
        XCTAssertEqual(ALPNGate.verdict(Self.clientHello(alpn: ["h2", "http/1.1"])), .pass)
        XCTAssertEqual(ALPNGate.verdict(Self.clientHello(alpn: ["http/1.1"])), .pass)
        XCTAssertEqual(ALPNGate.verdict(Self.clientHello(alpn: nil)), .pass, "a client without ALPN is served")
        XCTAssertEqual(ALPNGate.verdict(Self.clientHello(alpn: ["h2"])), .refuse)
        XCTAssertEqual(ALPNGate.verdict(Self.clientHello(alpn: ["http/1.0", "spdy/3"])), .refuse)
        XCTAssertEqual(ALPNGate.verdict(Array("GET / HTTP/1.1\r\n".utf8)), .pass, "not TLS: the TLS library refuses it")
        let whole = Self.clientHello(alpn: ["h2"])
        for cut in [1, 3, 5, 20, whole.count - 1] {
            XCTAssertEqual(ALPNGate.verdict(Array(whole.prefix(cut))), .needMore, "cut at \(cut)")
        }
    }

    /// Every truncation and every single-byte change of a real hello: an answer, never a trap.
    func testNoInputReadsOutOfBounds() {
        let hello = Self.clientHello(alpn: ["h2", "http/1.1"])
        for i in hello.indices {
            for value: UInt8 in [0, 1, 0x7f, 0xff] {
                var changed = hello
                changed[i] = value
                _ = ALPNGate.verdict(changed)
                _ = ALPNGate.verdict(Array(changed.prefix(i)))
            }
        }
    }
}
