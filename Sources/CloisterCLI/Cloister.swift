import ArgumentParser
import CShim
import FoundationEssentials
import Supervisor
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

struct Cloister: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cloister",
        abstract: "A browser-terminal server whose parsers run in sandboxed, privilege-separated workers.",
        subcommands: [ServeCommand.self, NurseryServiceCommand.self, TtydCommand.self, AttachCommand.self, ControlCommand.self, PolicyCommand.self,
                      PlayCommand.self, RecordingsCommand.self, Version.self, RoleCommand.self])
}

/// A role that must be confined before it does anything else.
protocol SandboxedCommand: AsyncParsableCommand {
    /// Runs while the process is still single-threaded, before the async runtime starts
    /// (`Sandbox.confine`); `run` makes the role's threads and then seals the sandbox.
    mutating func confine() throws
}

/// The entry point is synchronous on purpose: capabilities, securebits and Landlock apply per
/// thread and are inherited by the threads a thread makes, so a sandboxed role is confined
/// before Swift concurrency starts any thread. Only then does the async part run, which makes
/// the role's threads and loads its filter.
///
/// Swift concurrency then runs on SwiftNIO's event-loop threads, not on libdispatch's pool:
/// on Linux, libdispatch's pool monitor reads /proc/<tid>/stat of its threads while work is
/// queued, and crashes the process (SIGILL) when that open fails, which it always does in a
/// sandbox. With NIO as the global executor no pool thread ever registers. (Delayed jobs,
/// `Task.sleep`, still go through libdispatch: Cloister's roles sleep with `Wait`.) The hook is
/// set through CShim rather than NIO's dlsym-based installer, which cannot find it in the
/// statically linked build.
@main
enum Main {
    static func main() {
        // A peer that goes away is an EPIPE error to handle, not a reason to die. Spawned
        // roles get default dispositions back (ChildProcess resets every signal).
        signal(SIGPIPE, SIG_IGN)
        // Before any thread: glibc would give each thread that allocates an arena of its own
        // (with its own free pages), and a role's threads are its event loop and the
        // circuits' readers and writers, whose allocations tcache serves; one arena saved
        // about a megabyte across an idle service's five processes.
        _ = cloister_single_malloc_arena()
        var command: ParsableCommand
        do {
            command = try Cloister.parseAsRoot()
        } catch {
            // Usage errors exit with 2 (as getopt-style tools do), help and version with 0.
            if Cloister.exitCode(for: error) == .validationFailure {
                printToStandardError("cloister: \(Cloister.message(for: error))\n")
                exit(2)
            }
            Cloister.exit(withError: error)
        }
        if command is ServeCommand {
            // Before any thread exists, so every thread inherits the mask and only the
            // supervisor's signal thread takes them.
            SupervisorRole.blockSignals()
        }
        if var role = command as? SandboxedCommand {
            do {
                try role.confine()
            } catch {
                Cloister.exit(withError: error)
            }
            command = role
        }
        guard let asyncCommand = command as? AsyncParsableCommand else {
            do {
                try command.run()
                Cloister.exit()
            } catch {
                Cloister.exit(withError: error)
            }
        }
        if command is WorkerCommand || command is TemplateCommand || command is VaultCommand || command is KeyholderCommand || command is NurseryCommand
            || command is NurseryServiceCommand || command is RecorderCommand {
            // One event loop each (a worker forked by the template goes on from its command):
            // a worker serves its clients and its vault link there, the
            // vault its terminals and worker links, so a message goes from the socket it came
            // on to the one it leaves by on one thread; workers give the parallelism (one per
            // core by default). The nursery answers one request at a time, and the recorder
            // writes from its feed threads, so a second loop would only idle.
            NIOSingletons.groupLoopCountSuggestion = 1
        }
        // Every job goes to one of NIO's event loops; a job started on a loop stays on it.
        guard cloister_install_global_executor(enqueueOnEventLoop) == 0 else {
            printToStandardError("cloister: Swift concurrency's global executor was already replaced\n")
            exit(70)
        }
        nonisolated(unsafe) var running = asyncCommand
        // Detached: `main` is main-actor isolated, and nothing drains the main queue.
        Task.detached {
            do {
                try await running.run()
                Cloister.exit()
            } catch {
                Cloister.exit(withError: error)
            }
        }
        // The task ends the process; the main thread only waits.
        while true { pause() }
    }
}

/// Swift concurrency's global executor once `Main` installs it. Not in `Main`, whose members
/// are main-actor isolated: a closure from there checks that it runs on the main thread.
private func enqueueOnEventLoop(_ job: UnsafeMutableRawPointer?) {
    MultiThreadedEventLoopGroup.singleton.any().enqueue(ExecutorJob(unsafeBitCast(job, to: UnownedJob.self)))
}
