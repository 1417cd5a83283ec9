import XCTest
import WebAssets
@testable import Worker

#if canImport(Glibc)
import Glibc
#endif

/// The template's warm-up runs the worker's pipeline on fixed requests. That it starts no
/// thread is checked where it matters, in the real template: its confinement, which comes
/// after the warm-up, refuses a process with more than one thread (IsolationTests start it).
final class WarmUpTests: XCTestCase {
    func testBothRequestsAreAnsweredUnderTheBasePath() throws {
        var settings = WebWorker.Settings()
        settings.basePath = try BasePath("/term")
        let answer = String(decoding: WorkerWarmUp.run(settings: settings, assets: try WorkerUnderTest.assets.get()), as: UTF8.self)
        XCTAssertTrue(answer.hasPrefix("HTTP/1.1 503 Service Unavailable\r\n"), answer)
        XCTAssertTrue(answer.contains("HTTP/1.1 101 Switching Protocols\r\n"), answer)
        XCTAssertTrue(answer.contains("Sec-WebSocket-Protocol: tty\r\n"), answer)
    }

    func testWithoutAPageTheHandshakeIsStillAnswered() {
        let answer = String(decoding: WorkerWarmUp.run(settings: .init(), assets: AssetBundle()), as: UTF8.self)
        XCTAssertTrue(answer.contains("HTTP/1.1 101 Switching Protocols\r\n"), answer)
    }
}
