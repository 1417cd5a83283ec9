import Logging
@testable import Supervisor
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// When the nursery dies, the supervisor takes over only processes that the kernel says are
/// its own children: a shell's pid that the old nursery reaped may already belong to another
/// process, which must never be signalled as a shell. Checked against the real kernel (the
/// test process takes the place of the supervisor; the positive case, a real nursery's shells,
/// is in ChaosTests).
final class OrphanShellsTests: XCTestCase {
    func testAProcessThatIsNotThisProcesssChildIsLeftAlone() {
        var logger = Logger(label: "test.orphans")
        logger.logLevel = .critical
        let orphans = OrphanShells(logger: logger)
        // The parent exists and is not our child; pid 1 likewise; a pid past the kernel's
        // limit exists nowhere.
        orphans.takeOver([getppid(), 1, 4_194_305])
        XCTAssertEqual(orphans.count, 0)
        XCTAssertTrue(orphans.all.isEmpty)
        XCTAssertEqual(kill(getppid(), 0), 0, "the parent was not touched")
    }
}
