import NIOCore
import NIOPosix

/// Timers on NIO's event loops, where Swift concurrency runs (`Main`): `Task.sleep` goes
/// through libdispatch, whose Linux pool monitor cannot run in a sandbox and which would
/// otherwise keep a pool of threads in the supervisor only for its timers.
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
