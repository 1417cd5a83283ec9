import Foundation
import XCTest
@testable import Sandbox

/// Every kind of malformed profile is rejected before anything starts, naming the file, the
/// JSON path and what is wrong.
final class PolicyParsingTests: XCTestCase {
    private func error(_ json: String, file: StaticString = #filePath, line: UInt = #line) -> PolicyError? {
        do {
            _ = try Policy.parse(Data(json.utf8), source: "test.json")
            XCTFail("accepted: \(json)", file: file, line: line)
            return nil
        } catch {
            return error
        }
    }

    private let valid = #"{"defaultAction": "SCMP_ACT_KILL_PROCESS", "architectures": ["SCMP_ARCH_X86_64"], "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}"#

    func testValidPolicyParses() throws {
        let policy = try Policy.parse(Data(valid.utf8), source: "test.json")
        XCTAssertEqual(policy.defaultAction, .killProcess)
        XCTAssertEqual(policy.rules.count, 1)
        XCTAssertEqual(policy.rules[0].path, "$.syscalls[0]")
    }

    func testInvalidJSON() {
        let e = error(#"{"defaultAction": "SCMP_ACT_KILL_PROCESS", "#)
        XCTAssertEqual(e?.file, "test.json")
        XCTAssertEqual(e?.path, "$")
        XCTAssertTrue(e?.message.hasPrefix("invalid JSON") ?? false, "\(String(describing: e))")
    }

    func testUnknownSyscall() {
        let e = error(#"{"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}, {"names": ["write", "opne"], "action": "SCMP_ACT_ALLOW"}]}"#)
        XCTAssertEqual(e?.path, "$.syscalls[1].names[1]")
        XCTAssertEqual(e?.message, "unknown syscall \"opne\"")
    }

    func testUnknownAction() {
        var e = error(#"{"defaultAction": "SCMP_ACT_EXPLODE"}"#)
        XCTAssertEqual(e?.path, "$.defaultAction")
        XCTAssertTrue(e?.message.hasPrefix("unknown action \"SCMP_ACT_EXPLODE\"") ?? false)
        e = error(#"{"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": [{"names": ["read"], "action": "ALLOW"}]}"#)
        XCTAssertEqual(e?.path, "$.syscalls[0].action")
    }

    func testBadOperator() {
        let e = error(#"{"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": [{"names": ["ioctl"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 1, "value": 21505, "op": "SCMP_CMP_ROUGHLY"}]}]}"#)
        XCTAssertEqual(e?.path, "$.syscalls[0].args[0].op")
        XCTAssertTrue(e?.message.hasPrefix("unknown operator \"SCMP_CMP_ROUGHLY\"") ?? false)
    }

    func testArgumentIndexOutOfRange() {
        let e = error(#"{"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": [{"names": ["ioctl"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#)
        XCTAssertEqual(e?.path, "$.syscalls[0].args[0].index")
        XCTAssertEqual(e?.message, "6 is out of range: a syscall has arguments 0 to 5")
    }

    func testMissingKeyAndWrongType() {
        var e = error(#"{"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}"#)
        XCTAssertEqual(e?.path, "$.syscalls[0].names")
        XCTAssertEqual(e?.message, "missing required key \"names\"")
        e = error(#"{"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": [{"names": ["ioctl"], "action": "SCMP_ACT_ALLOW", "args": [{"index": "one", "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#)
        XCTAssertEqual(e?.path, "$.syscalls[0].args[0].index")
        XCTAssertTrue(e?.message.hasPrefix("wrong type") ?? false)
    }

    func testErrnoRetOnlyWithErrno() {
        let e = error(#"{"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]}"#)
        XCTAssertEqual(e?.path, "$.syscalls[0].errnoRet")
    }

    func testEmptyNamesAndUnknownArchitecture() {
        var e = error(#"{"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": [{"names": [], "action": "SCMP_ACT_ALLOW"}]}"#)
        XCTAssertEqual(e?.path, "$.syscalls[0].names")
        e = error(#"{"defaultAction": "SCMP_ACT_KILL_PROCESS", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_PDP11"]}"#)
        XCTAssertEqual(e?.path, "$.architectures[1]")
    }

    func testSameArgumentTwice() {
        let e = error(#"{"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": [{"names": ["ioctl"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 1, "value": 1, "op": "SCMP_CMP_GE"}, {"index": 1, "value": 9, "op": "SCMP_CMP_LE"}]}]}"#)
        XCTAssertEqual(e?.path, "$.syscalls[0].args[1].index")
    }

    func testUnreadableFile() {
        XCTAssertThrowsError(try Policy.load(file: "/nonexistent/policy.json")) {
            let e = $0 as? PolicyError
            XCTAssertEqual(e?.file, "/nonexistent/policy.json")
            XCTAssertNil(e?.path, "the file as a whole, no JSON path")
            XCTAssertEqual(e?.description, "/nonexistent/policy.json: cannot read: open: No such file or directory (errno 2)")
        }
    }

    func testRoundTripThroughJSON() throws {
        let policy = try Policy.load(file: packageRootPolicies + "/worker.json")
        let again = try Policy.parse(Data(policy.json().utf8), source: policy.source)
        XCTAssertEqual(again, policy)
    }
}

let packageRootPolicies: String = {
    var dir = #filePath
    for _ in 0..<3 { dir = String(dir[..<dir.lastIndex(of: "/")!]) }
    return dir + "/policies"
}()
