"""The scheduler's work: schedules (`schedules`) and their timetable (`timetable`), the
emitter that fires them (`emitter`), and the reconciler that brings Redis back in line with
the database (`reconciler`)."""
