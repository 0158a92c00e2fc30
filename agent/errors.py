"""The agent's error tree: what callers can act on.

```
AgentError
  + NotServingError           no model is loaded yet: nothing to infer with
  + InferenceError            one inference failed (bad input, back end error); serving goes on
  + TransientError            retried with backoff; the deployment goes on later
  |   DownloadError           connection dropped, server busy, short read
  |   ServerUnavailableError  the control server cannot be reached
  |   BrokerUnavailableError  the MQTT broker cannot be reached or refused a publish
  |   ReenrollmentRefused     the id is enrolled with another key; waits for the operator's approval
  + FatalError                ends the deployment, always reported
      VerificationError       bad signature, digest or length mismatch, expired, rollback
      TrustRootError          the configured trust root is missing or unreadable
      EnrollmentError         the server refused the enrollment token
      IncompatibleModelError  no back end here can load the model's format
      ActivationError         the model failed to load or its smoke test / trial
```
Pluggable parts (fetchers, back ends) raise only these types and chain the rest
with `raise ... from e`.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class NotServingError(AgentError):
    """No model is loaded: the device has none installed yet, or it failed to load."""


class InferenceError(AgentError):
    """One inference failed; the model keeps serving."""


class TransientError(AgentError):
    """Worth retrying later: nothing is known to be wrong with the deployment."""


class DownloadError(TransientError):
    """An artifact download failed in a way a retry may fix."""


class ServerUnavailableError(TransientError):
    """The control server could not be reached or answered with a transient error."""


class BrokerUnavailableError(TransientError):
    """The MQTT broker is not connected or would not take a message; the spool keeps it."""


class ReenrollmentRefused(TransientError):
    """The server holds a live credential for this id made with another key: the operator
    approves with `fleetcast device reprovision ID`; until then the agent waits."""


class FatalError(AgentError):
    """Ends the deployment on this device; always reported with its message."""


class VerificationError(FatalError):
    """Signed metadata or an artifact failed a check: never install it."""


class TrustRootError(FatalError):
    """The trust root given by configuration is missing, unreadable or malformed."""


class EnrollmentError(FatalError):
    """The server refused to enroll this device (wrong enrollment token, bad device id)."""


class IncompatibleModelError(FatalError):
    """No back end on this device can load the model's format."""


class ActivationError(FatalError):
    """The new model did not load, failed its smoke test, or failed its trial."""
