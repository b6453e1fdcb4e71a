"""The gRPC servicers of the control plane, one module per service in protos/voxmesh/v1:
auth.py (AuthService), users.py (UserService), projects.py (ProjectService), jobs.py
(JobService), results.py (JobResultService), settings.py (SettingsService)."""
