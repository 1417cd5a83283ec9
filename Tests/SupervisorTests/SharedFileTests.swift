import Supervisor
import SystemCalls
import SystemPackage
import WebAssets
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The page's assets as workers get them, against the kernel: a memory file sealed against
/// any change, and for each worker a read-only descriptor with an offset of its own.
final class SharedFileTests: XCTestCase {
    // From <linux/fcntl.h>; the Glibc overlay has none of them.
    let getSeals: Int32 = 1034, sealSeal: Int32 = 1, sealShrink: Int32 = 2, sealGrow: Int32 = 4, sealWrite: Int32 = 8

    private func sealed() throws -> FileDescriptor {
        var bundle = AssetBundle()
        bundle.assets["/"] = Asset(contentType: "text/plain", body: Array("hello, worker".utf8), gzipped: nil)
        return try AssetLoader.sealedFile(bundle)
    }

    func testTheFileIsSealedAgainstEveryChange() throws {
        let file = try sealed()
        defer { try? file.close() }
        XCTAssertEqual(fcntl(file.rawValue, getSeals), sealSeal | sealShrink | sealGrow | sealWrite)
        XCTAssertEqual(write(file.rawValue, "x", 1), -1, "not even its creator writes to it")
        XCTAssertEqual(errno, EPERM)
        XCTAssertEqual(ftruncate(file.rawValue, 0), -1)
        let readable = mmap(nil, 4096, PROT_READ, MAP_SHARED, file.rawValue, 0)
        XCTAssertNotEqual(readable, MAP_FAILED, "read-only mappings stay possible")
        if readable != MAP_FAILED { munmap(readable, 4096) }
        XCTAssertEqual(mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, file.rawValue, 0), MAP_FAILED, "no writable mapping")
    }

    func testEachReaderGetsAReadOnlyDescriptorWithItsOwnOffset() throws {
        let file = try sealed()
        defer { try? file.close() }
        let first = try RoleLauncher.reopened(file), second = try RoleLauncher.reopened(file)
        defer {
            try? first.close()
            try? second.close()
        }
        XCTAssertEqual(write(first.rawValue, "x", 1), -1)
        XCTAssertEqual(errno, EBADF, "opened read-only")
        XCTAssertEqual(fcntl(first.rawValue, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC, "only the role it is given to gets it")
        let whole = try first.readToEnd()
        XCTAssertEqual(try AssetBundle(decoding: whole)["/"]?.body, Array("hello, worker".utf8))
        XCTAssertEqual(try second.readToEnd(), whole, "the first reader's offset is not the second's")
    }
}
