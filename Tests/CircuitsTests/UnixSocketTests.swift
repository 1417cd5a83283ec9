import Foundation
import SystemCalls
import SystemPackage
import TestSupport
import XCTest
@testable import Circuits

#if canImport(Glibc)
import Glibc
#endif

/// Transports between processes that meet by a filesystem path.
final class UnixSocketTests: XCTestCase {
    private var directory: String!

    override func setUp() {
        directory = NSTemporaryDirectory() + "cloister-sockets-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(directory, 0o700)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: directory)
    }

    func testListenConnectAndTalk() async throws {
        do {
            let before = openDescriptorCount()
            do {
                let path = directory + "/transport.sock"
                let listener = try UnixSocket.listen(path: path, kind: .seqpacket)
                var info = stat()
                XCTAssertEqual(lstat(path, &info), 0)
                XCTAssertEqual(info.st_mode & 0o777, 0o600, "only the owner may connect")
                XCTAssertEqual(info.st_mode & S_IFMT, S_IFSOCK)

                let client = try UnixSocket.connect(path: path, kind: .seqpacket)
                let server = try listener.accept()
                let peer = try UnixSocket.Listener.peerCredentials(server)
                XCTAssertEqual(peer.uid, getuid())
                XCTAssertEqual(peer.pid, getpid())
                async let a = Transport<UInt16>.start(socket: client, configuration: configuration(.opener))
                async let b = Transport<UInt16>.start(socket: server, configuration: configuration(.acceptor))
                let (opener, acceptor) = try await (a, b)
                let c = try opener.open()
                try await c.send(Array("by path".utf8), end: true)
                let served = try await acceptor.accept()
                let awaited = try await served.receive()
                XCTAssertEqual(awaited.payload, Array("by path".utf8))
                opener.close()
                acceptor.close()
                listener.close()
                XCTAssertNotEqual(access(path, F_OK), 0, "the socket file is removed on close")
            }
            XCTAssertEqual(openDescriptorCount(), before)
        }
    }

    func testStaleSocketIsReplacedLiveOneIsNot() throws {
        let path = directory + "/stale.sock"
        // A socket file whose listener is gone.
        let old = try UnixSocket.listen(path: path, kind: .seqpacket)
        try old.descriptor.close()
        let fresh = try UnixSocket.listen(path: path, kind: .seqpacket)
        defer { fresh.close() }
        // A live one is never taken over.
        XCTAssertThrowsError(try UnixSocket.listen(path: path, kind: .seqpacket)) {
            let error = $0 as? SystemCallError
            XCTAssertEqual(error?.errno, .addressInUse)
            XCTAssertEqual(error?.call, "bind")
            XCTAssertEqual(error?.detail, path)
        }
    }

    func testRegularFileAtPathIsNotRemoved() throws {
        let path = directory + "/file"
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data("keep".utf8)))
        XCTAssertThrowsError(try UnixSocket.listen(path: path, kind: .stream)) {
            XCTAssertEqual(($0 as? SystemCallError)?.errno, .addressInUse)
        }
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "keep")
    }

    func testErrorsNameThePath() {
        XCTAssertThrowsError(try UnixSocket.connect(path: directory + "/missing.sock", kind: .seqpacket)) {
            let error = $0 as? SystemCallError
            XCTAssertEqual(error?.errno, .noSuchFileOrDirectory)
            XCTAssertEqual(error?.call, "connect")
            XCTAssertEqual(error?.detail, "\(self.directory!)/missing.sock")
        }
        let long = "/tmp/" + String(repeating: "x", count: 200)
        XCTAssertThrowsError(try UnixSocket.listen(path: long, kind: .seqpacket)) {
            let error = $0 as? SystemCallError
            XCTAssertEqual(error?.errno, .fileNameTooLong)
            XCTAssertTrue(error?.detail.contains("a path of 1 to 107 bytes") ?? false, "\(String(describing: error))")
        }
    }
}
