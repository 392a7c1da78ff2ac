"""The web app for the people in the loop (`selfplay serve`): watch runs, review training data, judge blind."""
