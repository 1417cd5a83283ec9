import XCTest
@testable import Keyholder

/// The keyholder signs what a TLS server signs, and nothing else a worker might ask for.
final class KeyholderInputTests: XCTestCase {
    func testOnlyHandshakeInputs() {
        let context = Array("TLS 1.3, server CertificateVerify".utf8) + [0]
        let tls13 = Array(repeating: UInt8(0x20), count: 64) + context + Array(repeating: 7, count: 32)
        XCTAssertTrue(Signer.isHandshakeInput(tls13))
        XCTAssertTrue(Signer.isHandshakeInput(Array(repeating: UInt8(0x20), count: 64) + context + Array(repeating: 7, count: 48)))
        let tls12 = Array(repeating: UInt8(1), count: 64) + [3, 0x00, 0x17, 65] + Array(repeating: 4, count: 65)
        XCTAssertTrue(Signer.isHandshakeInput(tls12))
        // The client's context string, a wrong length, arbitrary data: refused.
        let client = Array(repeating: UInt8(0x20), count: 64) + Array("TLS 1.3, client CertificateVerify".utf8) + [0] + Array(repeating: 7, count: 32)
        XCTAssertFalse(Signer.isHandshakeInput(client))
        XCTAssertFalse(Signer.isHandshakeInput(tls13 + [0]))
        XCTAssertFalse(Signer.isHandshakeInput(Array(tls12.dropLast())))
        XCTAssertFalse(Signer.isHandshakeInput(Array("{\"alg\":\"ES256\"}.payload".utf8)))
        XCTAssertFalse(Signer.isHandshakeInput([]))
    }
}
