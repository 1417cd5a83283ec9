import NIOCore
import NIOPosix

/// Timers for sandboxed roles: `Task.sleep` goes through libdispatch, whose Linux pool
/// monitor cannot run in a sandbox; NIO's event loop schedules the wake-up instead.
public enum Wait {
    public static func sleep(for duration: Duration) async {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let promise = loop.makePromise(of: Void.self)
        let task = loop.scheduleTask(in: TimeAmount(duration)) { promise.succeed() }
        await withTaskCancellationHandler {
            try? await promise.futureResult.get()
        } onCancel: {
            task.cancel()
            promise.succeed()
        }
    }
}
