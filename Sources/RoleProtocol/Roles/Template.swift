extension RoleDeclaration {
    public static let template = RoleDeclaration(
        role: .template, purpose: "forks a worker per connection: confined, one thread, the worker's profile compiled once; no client byte, no secret",
        link: .supervisorTemplate,
        // It never makes a thread: each worker it forks makes its own, then seals itself
        // under the worker's profile.
        threads: 1, reserve: 0, sharedFile: "the page's assets, a sealed memory file (read once, shared with every worker it forks)",
        profile: RoleDeclaration.worker.profile, sealed: false, settings: "TemplateSettings")
}

extension Role {
    public static let template = Role(rawValue: "template")
}

/// What the template is started with: what every worker it forks runs with.
public struct TemplateSettings: RoleSettings {
    public static var declaration: RoleDeclaration { .template }

    public var worker: WorkerSettings

    public init(worker: WorkerSettings) { self.worker = worker }

    public func validate() throws(SettingsError) { try worker.validate() }
}
