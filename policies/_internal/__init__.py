"""Private helpers of the policies package; not part of its API."""
