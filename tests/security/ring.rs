//! Hostile ring peers: idle and garbage connections to a rank's ring port
//! must not keep the real peers from joining.
