/// The continuations a suspended sender, receiver or closer waits on.
///
/// Debug builds (the tests) use checked continuations, which trap on a continuation resumed
/// twice and warn about one never resumed. Release builds use unsafe ones: a checked
/// continuation allocates a guard object per suspension and resumes through an atomic
/// exchange, which measured 7 % of throughput with 64 circuits of 4 KiB messages
/// (`cloister-bench circuits --payload 4096 --circuits 64`), where nearly every message
/// suspends and resumes its consumer.
#if DEBUG
typealias Continuation<T, E: Error> = CheckedContinuation<T, E>
#else
typealias Continuation<T, E: Error> = UnsafeContinuation<T, E>
#endif

@inline(__always)
func withContinuation<T>(isolation: isolated (any Actor)? = #isolation,
                         _ body: (Continuation<T, Never>) -> Void) async -> sending T {
    #if DEBUG
    await withCheckedContinuation(isolation: isolation, body)
    #else
    await withUnsafeContinuation(isolation: isolation, body)
    #endif
}

@inline(__always)
func withThrowingContinuation<T>(isolation: isolated (any Actor)? = #isolation,
                                 _ body: (Continuation<T, Error>) -> Void) async throws -> sending T {
    #if DEBUG
    try await withCheckedThrowingContinuation(isolation: isolation, body)
    #else
    try await withUnsafeThrowingContinuation(isolation: isolation, body)
    #endif
}
